"""Teacher registry: every teacher checkpoint comes with a card (checksum, architecture, dataset,
class count and measured accuracy), written next to it as ``<checkpoint>.card.json`` and, when a
registry file is given, indexed there by checksum.

Distillation methods check the card in `preflight` (driver side, before Ray starts): a checksum,
architecture, dataset or class-count mismatch, or a recorded accuracy below the configured
expectation, raises `ConfigError`; `evaluate_teacher` measures the accuracy afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kdray.config import ConfigError

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig

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


@torch.no_grad()
def evaluate_teacher(logits_fn: Callable[[Tensor], Tensor], cfg: ExperimentConfig, max_items: int = 0) -> float:
    """Top-1 (%) of `logits_fn` ((B, 3, H, W) -> (B, C)) on cfg.eval.split, on `max_items`
    evenly spaced images (0 = all), on the CPU of the caller."""
    from torch.utils.data import DataLoader, Subset

    from kdray.data import build_eval_dataset

    data = build_eval_dataset(cfg)
    n = len(data)
    if 0 < max_items < n:
        data = Subset(data, [i * n // max_items for i in range(max_items)])
    hits = total = 0
    for x, y in DataLoader(data, batch_size=cfg.eval.batch_size):
        hits += int((logits_fn(x).argmax(dim=1) == torch.as_tensor(y)).sum())
        total += len(y)
    if total == 0:
        raise ConfigError(f"eval.split {cfg.eval.split!r} is empty: cannot measure the teacher")
    return 100.0 * hits / total
