"""Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
Network", NIPS 2014 workshop, arXiv:1503.02531).

Loss: L = w_ce * CE(s, y) + w_kd * tau^2 * KL(softmax(t/tau) || softmax(s/tau)). Defaults follow
mdistiller's CIFAR-100 KD recipe (tau = 4, w_ce = 0.1, w_kd = 0.9). The teacher is a frozen
classifier loaded from `model.teacher_ckpt` (architecture `model.teacher_arch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from kdray.checks import check_range
from kdray.methods.base import Method
from kdray.modules.losses import kl_div, term_weights, weighted_sum
from kdray.modules.teachers import build_classifier, build_teacher
from kdray.registry import register_method
from kdray.search import Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class KDConfig:
    tau: float = 4.0       # mdistiller configs/cifar100/kd.yaml
    w_ce: float = 0.1
    w_kd: float = 0.9

    SEARCH: ClassVar[dict] = {"tau": Float(1.0, 8.0), "w_kd": Float(0.1, 2.0)}

    def __post_init__(self) -> None:
        check_range("method_cfg.tau", self.tau, 0.0, 100.0, low_open=True)
        check_range("method_cfg.w_ce", self.w_ce, 0.0, 100.0)
        check_range("method_cfg.w_kd", self.w_kd, 0.0, 100.0)


@register_method("kd")
class KD(Method):
    """Hinton KD from a frozen teacher checkpoint."""

    Config = KDConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = build_classifier(cfg, num_classes)
        self.teacher = build_teacher(cfg, num_classes)

    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        build_teacher(cfg, data.num_classes)

    def forward(self, batch: Batch, step: Step) -> LossDict:
        x = batch.views[0]
        s = self.student(x)
        with torch.no_grad():
            t = self.teacher(x)
        terms = {"ce": F.cross_entropy(s.logits, batch.labels),
                 "kd": kl_div(s.logits, t.logits.float(), self.mcfg.tau)}
        return {"loss": weighted_sum(terms, term_weights(self.mcfg, terms)),
                **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x).logits
