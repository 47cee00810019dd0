"""Typed, frozen experiment configuration.

Every field has a default; overrides use dotted keys (``--set optim.lr=1e-3``,
``--set method_cfg.tau=4``). Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key and the valid choices, before any Ray resource starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from kdray.checks import (  # noqa: F401 - re-exported for callers of the config API
    ConfigError,
    check,
    check_choice,
    check_finite,
    check_range,
)
from kdray.overrides import (  # noqa: F401 - re-exported: kdray.config is the public home
    build_dataclass,
    parse_overrides,
    set_dotted,
    to_plain,
)
from kdray.registry import method_class


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic_fs"
    root: str = "./data"             # where datasets are looked for (and downloaded to)
    download: bool = False           # let torchvision download where it can
    image_size: int = 32             # global crop / eval resize
    batch_size: int = 64             # global batch; split evenly across DDP workers
    loader_workers: int = 0          # DataLoader worker processes per DDP worker
    augment: str = "basic"           # none | basic | multicrop | deit
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
    # datasets without a val split (cifar10, cifar100, fscil_*) or whose own val is the reported
    # `test` (imagenet, coco, coco128) get one carved from train (kdray.data.CARVED_VAL): a fixed
    # HOLDOUT_FRACTION, per class (holdout_rows) or per image id (holdout_ids, detection). true:
    # `train` (and an FSCIL `base`) leave those images out; required to evaluate on that carved
    # `val`. Searched trials set it (Study.search_base), and so do the stages of a searched study
    # (Study.stage_config).
    holdout_val: bool = False
    synthetic_classes: int = 100     # synthetic_fs only
    synthetic_per_class: int = 60    # synthetic_fs only
    rand_augment: str = "rand-m9-mstd0.5-inc1"  # deit only: timm RandAugment spec ("" = off)
    random_erasing: float = 0.25     # deit only: timm RandomErasing probability (pixel mode)
    mixup_alpha: float = 0.0         # > 0: mixup parameters drawn in collate (DeiT: 0.8)
    cutmix_alpha: float = 0.0        # > 0: CutMix (DeiT: 1.0); the method applies the mixing
    mix_prob: float = 1.0            # share of batches mixed
    mix_switch_prob: float = 0.5     # CutMix rather than mixup when both are on
    repeated_aug: int = 1            # > 1: each drawn image appears this often per epoch (DeiT: 3)

    def __post_init__(self) -> None:
        check_choice("data.augment", self.augment, ("none", "basic", "multicrop", "deit"))
        for k in ("random_erasing", "mix_prob", "mix_switch_prob"):
            check_range(f"data.{k}", getattr(self, k), 0.0, 1.0)
        check_range("data.mixup_alpha", self.mixup_alpha, 0.0)
        check_range("data.cutmix_alpha", self.cutmix_alpha, 0.0)
        check_range("data.repeated_aug", self.repeated_aug, 1)
        check(self.repeated_aug == 1 or not self.class_aware, "data.repeated_aug",
              "cannot be combined with data.class_aware")
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
    kind: str = "fewshot"            # fewshot | top1 | fscil (data.dataset fscil_*) | coco | none
    split: str = "test"              # dataset split evaluated (val for model selection)
    every: int = 1                   # epochs between evaluations (the last epoch always evaluates)
    ways: int = 5
    extra_ways: tuple[int, ...] = ()  # more N-way settings scored on the same features (20: Omniglot)
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15                # per class; 0 = all remaining images (SMKD protocol: 600 - K)
    episodes: int = 200
    classifiers: tuple[str, ...] = ("proto",)   # proto | logreg | distlinear (SMKD's, slow)
    seed: int = 0                    # episode ids depend only on this: same episodes for every trial
    batch_size: int = 256
    max_items: int = 0               # top1: 0 = the whole split; > 0 = that many evenly spaced items

    def key(self, name: str) -> str:
        """A metric's reported name: prefixed by the split it is computed on ("test/top1")."""
        return f"{self.split}/{name}"

    @property
    def all_ways(self) -> tuple[int, ...]:
        """`ways`, then `extra_ways` (few-shot metrics acc_<N>w<K>s for each)."""
        return (self.ways, *(w for w in self.extra_ways if w != self.ways))

    def __post_init__(self) -> None:
        check_choice("eval.kind", self.kind, ("fewshot", "top1", "fscil", "coco", "none"))
        check_range("eval.max_items", self.max_items, 0)
        check_range("eval.every", self.every, 1)
        check_range("eval.ways", self.ways, 2)
        for w in self.extra_ways:
            check_range("eval.extra_ways", w, 2)
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
        mcls = method_class(self.method).Config
        if self.method_cfg is None:
            object.__setattr__(self, "method_cfg", mcls())
        elif isinstance(self.method_cfg, dict):
            object.__setattr__(self, "method_cfg", build_dataclass(mcls, self.method_cfg, "method_cfg"))
        check(isinstance(self.method_cfg, mcls), "method_cfg",
              f"expected {mcls.__name__} for method {self.method!r}, got {type(self.method_cfg).__name__}")
        check_range("seed", self.seed, 0)
        check_finite(self.flatten())

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict:
        return to_plain(dataclasses.asdict(self))

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
        _rederive(raw, items, method_class(raw.get("method", self.method)).Config)
        for key, value in items.items():
            set_dotted(raw, key, value, self)
        return ExperimentConfig.from_dict(raw)


def _rederive(raw: dict, items: dict[str, Any], mcls: type) -> None:
    """Fields of a method config whose defaults follow another field (``Config.DERIVED``, e.g.
    SMKD's loss weights follow its phase) go back to their default (None, resolved again in the
    Config's ``__post_init__``) when that field is overridden and they are not set alongside."""
    derived: dict[str, tuple[str, ...]] = getattr(mcls, "DERIVED", {})
    section = raw.get("method_cfg")
    if not derived or not isinstance(section, dict):
        return
    for field_name, dependents in derived.items():
        if f"method_cfg.{field_name}" not in items:
            continue
        for dep in dependents:
            if f"method_cfg.{dep}" not in items:
                section[dep] = None

