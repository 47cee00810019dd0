"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022, arXiv:2203.08679).

Classic KD mixes two effects: how confident the teacher is on the target class and how it ranks
the other classes. DKD splits the loss into TCKD and NCKD (kdray/methods/dkd/losses.py) and
weights them separately, so the non-target "dark knowledge" is not suppressed when the teacher
is confident:

    L = w_ce * CE(s, y) + f(epoch) * (w_tckd * TCKD + w_nckd * NCKD)

w_tckd = alpha, w_nckd = beta, tau = T, f = linear warm-up over `warmup_epochs` (docs/methods/
dkd.md). Defaults: the official CIFAR-100 recipe (mdistiller `DKD` defaults: CE weight 1,
alpha 1, beta 8, T 4, 20 warm-up epochs); the official per-pair configs change beta only (6 for
WRN-40-2 students, 2 for ResNet56/110 -> ResNet20/32), see kdray/presets/dkd.py. Teacher: a frozen
classifier from `model.teacher_ckpt` (kdray.modules.teachers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from kdray.checks import check, check_range
from kdray.methods.base import Method
from kdray.methods.dkd import losses as L
from kdray.modules.losses import term_weights, weighted_sum
from kdray.modules.teachers import build_classifier, build_teacher
from kdray.registry import register_method
from kdray.search import Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class DKDConfig:
    w_ce: float = 1.0            # mdistiller DKD.CE_WEIGHT
    w_tckd: float = 1.0          # alpha, DKD.ALPHA
    w_nckd: float = 8.0          # beta, DKD.BETA (per-pair 6 or 2: presets)
    tau: float = 4.0             # T, DKD.T
    warmup_epochs: float = 20.0  # DKD.WARMUP; 0 = no warm-up

    SEARCH: ClassVar[dict] = {
        "w_tckd": Float(0.0, 2.0),   # paper Table 1 ablates TCKD on/off; alpha = 1 throughout
        "w_nckd": Float(1.0, 10.0),  # paper Fig./Table: beta from 1 to 10; official 2 / 6 / 8
        "tau": Float(1.0, 8.0),      # as KD's range
    }

    def __post_init__(self) -> None:
        for k in ("w_ce", "w_tckd", "w_nckd"):
            check_range(f"method_cfg.{k}", getattr(self, k), 0.0, 100.0)
        check(self.w_ce + self.w_tckd + self.w_nckd > 0, "method_cfg.w_*",
              "at least one loss weight must be > 0")
        check_range("method_cfg.tau", self.tau, 0.0, 100.0, low_open=True)
        check_range("method_cfg.warmup_epochs", self.warmup_epochs, 0.0)

    @property
    def uses_teacher(self) -> bool:
        return self.w_tckd > 0 or self.w_nckd > 0


@register_method("dkd")
class DKD(Method):
    """CE plus separately weighted TCKD and NCKD from a frozen classifier teacher."""

    Config = DKDConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = build_classifier(cfg, num_classes)
        if self.mcfg.uses_teacher:
            self.teacher = build_teacher(cfg, num_classes, method="dkd")

    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        if cfg.method_cfg.uses_teacher or cfg.model.teacher_ckpt:
            build_teacher(cfg, data.num_classes, method="dkd")

    def forward(self, batch: Batch, step: Step) -> LossDict:
        m, x, y = self.mcfg, batch.views[0], batch.labels
        s = self.student(x).logits
        terms = {"ce": F.cross_entropy(s, y)}
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(x).logits.float()
            terms["tckd"] = L.tckd(s, t, y, m.tau)
            terms["nckd"] = L.nckd(s, t, y, m.tau)
        f = L.warmup_factor(step.epoch, m.warmup_epochs)
        weights = term_weights(m, terms)
        weights.update({k: f * w for k, w in weights.items() if k != "ce"})
        return {"loss": weighted_sum(terms, weights), **{k: v.detach() for k, v in terms.items()},
                "kd_warmup": torch.tensor(f)}

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.teacher(x).logits if self.teacher is not None else None
