"""Teachers: build a classifier, read weights from a kdray checkpoint or a plain state_dict, check
that they fit, freeze; and the teacher registry's cards.

Every method with a separate teacher goes through these functions, so the checks (and their
error messages) are the same everywhere. Files are read with ``torch.load(weights_only=True)``.

A card (checksum, architecture, dataset, class count, measured accuracy) is written next to a
teacher checkpoint as ``<checkpoint>.card.json`` and, when a registry file is given, indexed there
by checksum. Preflight checks it before Ray starts: a checksum, architecture, dataset or
class-count mismatch, or a recorded accuracy below the configured expectation, is a ConfigError.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdray.checkpoint import state_mismatch
from kdray.checks import ConfigError
from kdray.modules.backbones import Classifier, build_backbone

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


def build_classifier(cfg: ExperimentConfig, num_classes: int, arch: str = "") -> Classifier:
    """Backbone `arch` (default `model.arch`) with a linear head, from the model settings."""
    backbone = build_backbone(arch or cfg.model.arch, pretrained=cfg.model.pretrained,
                              drop_path=cfg.model.drop_path, image_size=cfg.data.image_size)
    return Classifier(backbone, num_classes)


# ---------------------------------------------------------------------------- reading weights
def read_file(path: str, key: str = "model.teacher_ckpt") -> Any:
    """`torch.load(path, weights_only=True)` on CPU; ConfigError naming `key` when no file."""
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: no file at {path!r}; train a teacher first "
                          "(e.g. `kdray train --method ce --set train.epochs=...`) and pass its "
                          "checkpoint path")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state(raw: Any) -> dict[str, torch.Tensor]:
    """Model weights inside a loaded file: a kdray checkpoint's `model.student` (or its whole
    `model`), a `state_dict` entry, or the plain state_dict itself; a DDP "module." prefix on
    every key is dropped."""
    state = raw
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"].get("student", state["model"])
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, without it, when any key has it; else `state` unchanged
    (e.g. "detector." for a kdray MKD checkpoint, whose student also holds the decoder)."""
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_model_state(path: str, prefix: str = "", key: str = "model.teacher_ckpt"
                     ) -> dict[str, torch.Tensor]:
    """Model weights from a kdray checkpoint (its `student`) or a plain state_dict file
    (`model_state`), under `prefix` when given (`strip_prefix`)."""
    state = model_state(read_file(path, key))
    return strip_prefix(state, prefix) if prefix else state


def torchvision_to_classifier(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision/timm ResNet state_dict (`conv1.*` ... `fc.*`) in `Classifier` keys (`fc.*`
    becomes `head.*`, the rest `backbone.*`); any other state unchanged."""
    if "fc.weight" in state and "conv1.weight" in state:
        return {(f"head.{k[3:]}" if k.startswith("fc.") else f"backbone.{k}"): v
                for k, v in state.items()}
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str,
                optional: tuple[str, ...] = (), keep_own: Callable[[str], bool] | None = None
                ) -> nn.Module:
    """Load `state` into `module`, all keys and shapes matching; else ConfigError
    "<source> does not fit <what>: missing [...], unexpected [...], shape mismatch [...]".

    Args:
        optional: key suffixes that may be absent on either side (e.g. a ViT "mask_token").
        keep_own: module keys absent from `state` for which this is true keep their values
            (e.g. torchvision's BatchNorm-free "num_batches_tracked", a train-only sub-module).
    """
    own = module.state_dict()
    if keep_own is not None:
        state = {**state, **{k: v for k, v in own.items() if k not in state and keep_own(k)}}
    why = state_mismatch(own, state, optional)
    if why:
        raise ConfigError(f"{source} does not fit {what}: {why}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=not optional)
    return module


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode (BatchNorm statistics and dropout fixed)."""
    module.requires_grad_(False)
    return module.eval()


def build_teacher(cfg: ExperimentConfig, num_classes: int, method: str = "kd") -> Classifier:
    """Frozen classifier teacher `model.teacher_arch` (default `model.arch`) from
    `model.teacher_ckpt`; ConfigError when the checkpoint is missing or does not fit."""
    arch = cfg.model.teacher_arch or cfg.model.arch
    teacher = Classifier(build_backbone(arch, image_size=cfg.data.image_size), num_classes)
    if not cfg.model.teacher_ckpt:
        raise ConfigError(f"model.teacher_ckpt: method {method!r} needs a trained teacher "
                          "checkpoint")
    ckpt = cfg.model.teacher_ckpt
    load_strict(teacher, load_model_state(ckpt), source=f"model.teacher_ckpt {ckpt!r}",
                what=f"teacher arch {arch!r} with {num_classes} classes")
    return freeze(teacher)


def build_timm_teacher(arch: str, ckpt: str, num_classes: int) -> nn.Module:
    """A timm model (its own key names and head) with weights from a plain state_dict file, or
    from the hub when `ckpt` is "" (only when the hub head has `num_classes` classes)."""
    import timm
    from timm.models import get_pretrained_cfg, is_model

    if not is_model(arch):
        raise ConfigError(f"model.teacher_arch: unknown model {arch!r} (a kdray backbone such as "
                          f"conv3, or a timm CNN such as regnety_160.deit_in1k)")
    if not ckpt:
        pcfg = get_pretrained_cfg(arch)
        if pcfg is None or pcfg.num_classes != num_classes:
            have = None if pcfg is None else pcfg.num_classes
            raise ConfigError(f"model.teacher_ckpt: empty, so {arch!r} would load hub weights, but "
                              f"they have {have} classes and the data {num_classes}; pass a "
                              "teacher checkpoint with --set model.teacher_ckpt=PATH")
        try:
            return freeze(timm.create_model(arch, pretrained=True, num_classes=num_classes))
        except Exception as e:  # offline, no HF access, corrupt cache ...
            raise ConfigError(f"model.teacher_ckpt: could not fetch hub weights for {arch!r} "
                              f"({type(e).__name__}: {e}); download them where there is internet "
                              "or pass a local file with --set model.teacher_ckpt=PATH") from None
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    load_strict(net, load_model_state(ckpt), source=f"model.teacher_ckpt {ckpt!r}",
                what=f"timm {arch!r} with {num_classes} classes")
    return freeze(net)


# ---------------------------------------------------------------------------- registry cards
CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class TeacherCard:
    sha256: str
    arch: str
    dataset: str
    num_classes: int
    top1: float               # % on the split named by `eval_split` (of `metric`)
    eval_split: str = "test"
    ss_transforms: str = ""   # transform set the SS head was trained with ("" = no SS head)
    ss_acc: float = -1.0      # contrastive accuracy of the SS head (%), -1 = not measured
    path: str = ""
    metric: str = "top1"      # what `top1` measures: "top1" (classifiers) or "AP" (detectors)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(ckpt: str) -> str:
    return ckpt + CARD_SUFFIX


def write_card(ckpt: str, *, arch: str, dataset: str, num_classes: int, top1: float,
               eval_split: str = "test", ss_transforms: str = "", ss_acc: float = -1.0,
               registry: str | None = None, metric: str = "top1") -> TeacherCard:
    """Checksum `ckpt`, write its card beside it and (optionally) add it to a registry JSON.
    `top1` is the teacher's score in % on `eval_split`: top-1, or box AP when metric="AP"."""
    card = TeacherCard(file_sha256(ckpt), arch, dataset, int(num_classes), float(top1),
                       eval_split, ss_transforms, float(ss_acc), os.path.abspath(ckpt), metric)
    with open(card_path(ckpt), "w") as f:
        json.dump(asdict(card), f, indent=2, sort_keys=True)
    if registry:
        entries = {}
        if os.path.isfile(registry):
            with open(registry) as f:
                entries = json.load(f)
        entries[card.sha256] = asdict(card)
        os.makedirs(os.path.dirname(os.path.abspath(registry)), exist_ok=True)
        with open(registry, "w") as f:
            json.dump(entries, f, indent=2, sort_keys=True)
    return card


def read_card(ckpt: str) -> TeacherCard | None:
    """The card stored beside `ckpt`, or None when there is none."""
    path = card_path(ckpt)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return TeacherCard(**json.load(f))


def check_card(card: TeacherCard, ckpt: str, *, arch: str, dataset: str, num_classes: int,
               min_top1: float = 0.0, ss_transforms: str = "") -> None:
    """Raise ConfigError when the checkpoint or the run does not match its card."""
    problems = []
    digest = file_sha256(ckpt)
    if digest != card.sha256:
        problems.append(f"checksum {digest[:12]}... differs from the card's {card.sha256[:12]}... "
                        "(the file changed after it was registered)")
    if card.arch != arch:
        problems.append(f"card architecture {card.arch!r}, configured {arch!r}")
    if card.dataset != dataset:
        problems.append(f"card dataset {card.dataset!r}, configured {dataset!r}")
    if card.num_classes != num_classes:
        problems.append(f"card has {card.num_classes} classes, the data {num_classes}")
    if card.top1 < min_top1:
        problems.append(f"recorded top-1 {card.top1:.2f}% is below the expected {min_top1:.2f}%")
    if ss_transforms and card.ss_transforms and card.ss_transforms != ss_transforms:
        problems.append(f"its SS head was trained on {card.ss_transforms!r} transforms, the run "
                        f"uses {ss_transforms!r}")
    if problems:
        raise ConfigError(f"model.teacher_ckpt {ckpt!r}: " + "; ".join(problems))


def check_teacher_card(ckpt: str, *, arch: str, dataset: str, num_classes: int,
                       min_top1: float = 0.0, ss_transforms: str = "", require: bool = False
                       ) -> TeacherCard | None:
    """`check_card` against the card beside `ckpt` when there is one (preflight runs this for
    every method given a `model.teacher_ckpt`); without a card, ConfigError when `require`."""
    card = read_card(ckpt)
    if card is None:
        if require:
            raise ConfigError(f"model.teacher_ckpt {ckpt!r} has no registry card "
                              f"({card_path(ckpt)}); register it with "
                              "kdray.modules.teachers.write_card")
        return None
    check_card(card, ckpt, arch=arch, dataset=dataset, num_classes=num_classes,
               min_top1=min_top1, ss_transforms=ss_transforms)
    return card
