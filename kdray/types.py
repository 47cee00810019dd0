"""Plain data carried between the data pipeline, the engine and the methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

LossDict = dict[str, Tensor]


def _move(x, device: torch.device | str, non_blocking: bool):
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, list | tuple):
        return type(x)(_move(v, device, non_blocking) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device, non_blocking) for k, v in x.items()}
    return x


@dataclass
class Batch:
    """One training batch.

    Attributes:
        views: image tensors, one per view/crop, each (B, C, H, W). Single-view data has one entry.
        labels: (B,) int64 class ids, or None for unlabelled data.
        masks: optional per-view bool patch masks (B, h, w); True = masked. Drawn in collate.
        mix: optional mixing parameters drawn in collate (permutation, lambda, boxes ...).
        index: optional (B,) dataset indices.
        extra: anything else a method's data pipeline adds (kept on device with the rest).
    """

    views: list[Tensor]
    labels: Tensor | None = None
    masks: list[Tensor] | None = None
    mix: dict | None = None
    index: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.views[0].shape[0])


@dataclass(frozen=True)
class Step:
    """Position in training. `progress` runs from 0 at the first step to 1 after the last."""

    it: int
    epoch: int
    total_its: int
    its_per_epoch: int = 1

    @property
    def progress(self) -> float:
        return min(1.0, self.it / max(1, self.total_its))

    @property
    def epoch_float(self) -> float:
        return self.it / max(1, self.its_per_epoch)


@dataclass(frozen=True)
class DataInfo:
    """What a method's `preflight` may know about the run's data, handed in by the engine so that
    methods never import `kdray.data`.

    Attributes:
        num_classes: classes of the training split (the classifier width).
        detection: whether the dataset is a COCO-format detection set.
        top1: ``top1(logits_fn, max_items) -> %``: top-1 accuracy of ``logits_fn`` ((B, 3, H, W)
            -> (B, C)) on ``eval.split`` over ``max_items`` evenly spaced images (0 = all).
    """

    num_classes: int
    detection: bool = False
    top1: Callable[[Callable[[Tensor], Tensor], int], float] | None = None
