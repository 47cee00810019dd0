"""Supervised cross-entropy baseline (no teacher): the reference row of every KD table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch.nn.functional as F

from kdray.checks import check_range
from kdray.methods.base import Method
from kdray.modules.teachers import build_classifier
from kdray.registry import register_method
from kdray.search import Float
from kdray.types import Batch, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class CEConfig:
    label_smoothing: float = 0.0

    SEARCH: ClassVar[dict] = {"label_smoothing": Float(0.0, 0.3)}

    def __post_init__(self) -> None:
        check_range("method_cfg.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)


@register_method("ce")
class CE(Method):
    """Cross-entropy on the first view."""

    Config = CEConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = build_classifier(cfg, num_classes)

    def forward(self, batch: Batch, step: Step) -> LossDict:
        out = self.student(batch.views[0])
        ce = F.cross_entropy(out.logits, batch.labels, label_smoothing=self.mcfg.label_smoothing)
        return {"loss": ce, "ce": ce.detach()}
