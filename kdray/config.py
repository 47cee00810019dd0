"""Typed, frozen experiment configuration.

Every field has a default; overrides use dotted keys (``--set optim.lr=1e-3``,
``--set method_cfg.tau=4``). Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key and the valid choices, before any Ray resource starts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union


class ConfigError(ValueError):
    """A bad configuration value, key or combination."""


def check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def check_choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {sorted(map(str, choices))}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high)))
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r} is out of range {lo}{low}, {high}{hi}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic_fs"
    root: str = "./data"             # where datasets are looked for (and downloaded to)
    download: bool = False           # let torchvision download where it can
    image_size: int = 32             # global crop / eval resize
    batch_size: int = 64             # global batch; split evenly across DDP workers
    loader_workers: int = 0          # DataLoader worker processes per DDP worker
    augment: str = "basic"           # none | basic | multicrop
    global_crops: int = 2            # multicrop only
    local_crops: int = 0             # multicrop only
    local_size: int = 16
    global_scale: tuple[float, float] = (0.25, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.25)
    patch_size: int = 4              # mask grid = image_size // patch_size
    mask_prob: float = 0.0           # share of images that get a block mask (SMKD/iBOT: 0.5)
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # per-image masked share ~ U(low, high)
    class_aware: int = 0             # m images per class in every batch; 0 = plain random sampler
    train_split: str = "train"
    synthetic_classes: int = 100     # synthetic_fs only
    synthetic_per_class: int = 60    # synthetic_fs only

    def __post_init__(self) -> None:
        check_choice("data.augment", self.augment, ("none", "basic", "multicrop"))
        check_range("data.image_size", self.image_size, 8)
        check_range("data.batch_size", self.batch_size, 1)
        check_range("data.loader_workers", self.loader_workers, 0)
        check_range("data.global_crops", self.global_crops, 1)
        check_range("data.local_crops", self.local_crops, 0)
        check_range("data.mask_prob", self.mask_prob, 0.0, 1.0)
        for k in ("global_scale", "local_scale", "mask_ratio"):
            lo, hi = getattr(self, k)
            check(0.0 <= lo <= hi <= 1.0, f"data.{k}", f"needs 0 <= low <= high <= 1, got {(lo, hi)}")
        check(self.image_size % self.patch_size == 0, "data.patch_size",
              f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        check_range("data.class_aware", self.class_aware, 0)
        check_range("data.synthetic_classes", self.synthetic_classes, 2)
        check_range("data.synthetic_per_class", self.synthetic_per_class, 2)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "conv4"              # kdray backbone name or any timm model name
    pretrained: bool = False
    drop_path: float = 0.0
    teacher_arch: str = ""           # for methods with a separate teacher; "" = same as arch
    teacher_ckpt: str = ""           # path to a teacher checkpoint (kdray or plain state_dict)

    def __post_init__(self) -> None:
        check_range("model.drop_path", self.drop_path, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"              # adamw | sgd
    lr: float = 1e-3                 # absolute (not scaled by batch size)
    weight_decay: float = 0.05
    weight_decay_end: float = -1.0   # >= 0: cosine weight-decay schedule to this value (DINO/iBOT)
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"         # cosine | step | constant
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    milestones: tuple[float, ...] = ()  # epochs, step schedule
    gamma: float = 0.1
    clip_grad: float = 0.0           # 0 = off; global norm
    freeze_last_layer_epochs: int = 0

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, ("adamw", "sgd"))
        check_choice("optim.schedule", self.schedule, ("cosine", "step", "constant"))
        check_range("optim.lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("optim.weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("optim.momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_range("optim.warmup_epochs", self.warmup_epochs, 0.0)
        check_range("optim.min_lr", self.min_lr, 0.0)
        check_range("optim.gamma", self.gamma, 0.0, 1.0, low_open=True)
        check_range("optim.clip_grad", self.clip_grad, 0.0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 0         # 0 = one pass over the data; >0 caps it (smoke runs)
    amp: str = "auto"                # auto (bf16 on capable GPUs, off on CPU) | bf16 | fp16 | off
    log_every: int = 20              # steps between step-level metric logs
    channels_last: bool = False
    init_from: str = ""              # checkpoint whose model weights start this run (e.g. phase 1)
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        check_range("train.epochs", self.epochs, 1)
        check_range("train.steps_per_epoch", self.steps_per_epoch, 0)
        check_choice("train.amp", self.amp, ("auto", "bf16", "fp16", "off"))
        check_range("train.log_every", self.log_every, 1)
        check_range("train.keep_checkpoints", self.keep_checkpoints, 1)


@dataclass(frozen=True)
class EvalConfig:
    kind: str = "fewshot"            # fewshot | top1 | none
    split: str = "test"              # dataset split evaluated (val for model selection)
    every: int = 1                   # epochs between evaluations (the last epoch always evaluates)
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15                # per class; 0 = all remaining images (SMKD protocol: 600 - K)
    episodes: int = 200
    classifiers: tuple[str, ...] = ("proto",)   # proto | logreg | distlinear (SMKD's, slow)
    seed: int = 0                    # episode ids depend only on this: same episodes for every trial
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_choice("eval.kind", self.kind, ("fewshot", "top1", "none"))
        check_range("eval.every", self.every, 1)
        check_range("eval.ways", self.ways, 2)
        check(len(self.shots) > 0 and all(s >= 1 for s in self.shots), "eval.shots",
              f"needs one or more shot counts >= 1, got {self.shots}")
        check_range("eval.queries", self.queries, 0)
        check_range("eval.episodes", self.episodes, 1)
        for c in self.classifiers:
            check_choice("eval.classifiers", c, ("proto", "logreg", "distlinear"))


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 1             # DDP workers per run (trial)
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0     # fractional allowed; > 0 selects NCCL and CUDA
    max_failures: int = 2            # worker-failure restarts per run (Ray Train FailureConfig)
    placement: str = "PACK"          # PACK | SPREAD: how a run's workers are spread over nodes

    def __post_init__(self) -> None:
        check_choice("resources.placement", self.placement, ("PACK", "SPREAD", "STRICT_SPREAD"))
        check_range("resources.num_workers", self.num_workers, 1)
        check_range("resources.cpus_per_worker", self.cpus_per_worker, 0)
        check_range("resources.gpus_per_worker", self.gpus_per_worker, 0.0)
        check_range("resources.max_failures", self.max_failures, -1)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
    "eval": EvalConfig, "resources": ResourcesConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    method: str = "ce"
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    method_cfg: Any = None           # the method's own Config dataclass (resolved from `method`)

    TOP: ClassVar[tuple[str, ...]] = ("method", "name", "seed")

    def __post_init__(self) -> None:
        from kdray.methods import METHODS  # late: methods import this module

        check_choice("method", self.method, METHODS)
        mcls = METHODS[self.method].Config
        if self.method_cfg is None:
            object.__setattr__(self, "method_cfg", mcls())
        elif isinstance(self.method_cfg, dict):
            object.__setattr__(self, "method_cfg", build_dataclass(mcls, self.method_cfg, "method_cfg"))
        check(isinstance(self.method_cfg, mcls), "method_cfg",
              f"expected {mcls.__name__} for method {self.method!r}, got {type(self.method_cfg).__name__}")
        check_range("seed", self.seed, 0)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict) -> ExperimentConfig:
        return build_dataclass(cls, raw, "")

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def flatten(self) -> dict[str, Any]:
        """Dotted keys, e.g. {"optim.lr": 0.001, "method_cfg.tau": 4.0} (MLflow params)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(key + ".", v)
                else:
                    out[key] = v

        walk("", self.to_dict())
        return out

    def override(self, overrides: dict[str, Any] | None = None, **kw: Any) -> ExperimentConfig:
        """A new config with dotted-key overrides applied; string values are parsed by field type."""
        items = dict(overrides or {})
        items.update(kw)
        raw = self.to_dict()
        if "method" in items and items["method"] != self.method:
            raw["method_cfg"] = None  # a different method starts from its own defaults
        for key, value in items.items():
            _set_dotted(raw, key, value, self)
        return ExperimentConfig.from_dict(raw)


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """["a.b=1", "c=x"] -> {"a.b": "1", "c": "x"}."""
    out: dict[str, str] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------------------- helpers
def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_plain(v) for v in x]
    return x


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set_dotted(raw: dict, key: str, value: Any, cfg: ExperimentConfig) -> None:
    parts = key.split(".")
    node = raw
    cls: Any = ExperimentConfig
    for i, p in enumerate(parts):
        if p == "method_cfg" and i == 0:
            from kdray.methods import METHODS

            method = raw.get("method", cfg.method)
            sub_cls = METHODS[method].Config if method in METHODS else None
        else:
            sub_cls = None
        names = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
        if p not in names:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"unknown config key {key!r}: {p!r} is not a field of {where}; "
                              f"valid keys there: {sorted(names)}")
        if i == len(parts) - 1:
            tp = _field_types(cls)[p]
            node[p] = _coerce(value, tp, key)
            return
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        cls = sub_cls or _field_types(cls)[p]
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} has no sub-keys")


def build_dataclass(cls: type, raw: Any, prefix: str):
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {prefix or 'top level'}; "
                          f"valid keys: {sorted(names)}")
    hints = _field_types(cls)
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        tp = hints[k]
        if k == "method_cfg":
            kwargs[k] = v  # resolved in ExperimentConfig.__post_init__
        elif dataclasses.is_dataclass(tp):
            kwargs[k] = build_dataclass(tp, v, key)
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to type `tp` (parsing strings from the command line) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("["):
                value = json.loads(s)
            else:
                value = [v for v in s.strip("()").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value
