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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

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


def load_model_state(path: str) -> dict[str, torch.Tensor]:
    """Model weights from a kdray checkpoint (its `student`) or a plain state_dict file."""
    if not os.path.isfile(path):
        raise ConfigError(f"model.teacher_ckpt: no file at {path!r}; train a teacher first "
                          "(e.g. `kdray train --method ce --set train.epochs=...`) and pass its "
                          "checkpoint path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"].get("student", state["model"])
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


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
    state = load_model_state(cfg.model.teacher_ckpt)
    why = state_mismatch(teacher.state_dict(), state)
    if why:
        raise ConfigError(f"model.teacher_ckpt {cfg.model.teacher_ckpt!r} does not fit teacher arch "
                          f"{arch!r} with {num_classes} classes: {why}")
    teacher.load_state_dict(state)
    return freeze(teacher)


# ---------------------------------------------------------------------------- registry cards
CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class TeacherCard:
    sha256: str
    arch: str
    dataset: str
    num_classes: int
    top1: float               # % on the split named by `eval_split`
    eval_split: str = "test"
    ss_transforms: str = ""   # transform set the SS head was trained with ("" = no SS head)
    ss_acc: float = -1.0      # contrastive accuracy of the SS head (%), -1 = not measured
    path: str = ""


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
               registry: str | None = None) -> TeacherCard:
    """Checksum `ckpt`, write its card beside it and (optionally) add it to a registry JSON."""
    card = TeacherCard(file_sha256(ckpt), arch, dataset, int(num_classes), float(top1),
                       eval_split, ss_transforms, float(ss_acc), os.path.abspath(ckpt))
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
