"""SSKD stage T2: train the teacher's SS module on its frozen backbone (docs/methods/sskd.md §3.2, §3.4).

The teacher classifier (stage T1, method `ce`) is loaded from model.teacher_ckpt, frozen and kept
in eval mode; only the 2-layer MLP trains, on the contrastive task "which normal image of the batch
is this transformed image from": cross-entropy over the rows of the (K*B, B) cosine-similarity
matrix with temperature `tau` (official code: 1, i.e. raw cosines). The top-1 evaluation reports
the frozen teacher's accuracy (what the teacher registry records); `train/ss_acc` is the
contrastive accuracy. Checkpoints hold {"teacher": classifier, "ss_head": MLP}, the format SSKD
(`kdray.methods.sskd.method`) loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from kdray.checks import check_choice, check_range
from kdray.dist import unwrap
from kdray.methods.base import Method
from kdray.methods.sskd import losses as L
from kdray.methods.sskd.method import build_sskd_teacher, ss_head
from kdray.registry import register_method
from kdray.search import Float
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


@dataclass(frozen=True)
class SSKDTeacherConfig:
    tau: float = 1.0              # teacher.py/student.py: no temperature for the teacher SS task
    transforms: str = "rotation"  # must match the student's method_cfg.transforms

    SEARCH: ClassVar[dict] = {"tau": Float(0.1, 1.0)}

    def __post_init__(self) -> None:
        check_range("method_cfg.tau", self.tau, 0.0, 100.0, low_open=True)
        check_choice("method_cfg.transforms", self.transforms, L.TRANSFORMS)


@register_method("sskd_teacher")
class SSKDTeacher(Method):
    """Stage T2: the SS module (the only trainable part) on a frozen T1 teacher."""

    Config = SSKDTeacherConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.teacher = build_sskd_teacher(cfg, num_classes, with_head=False).classifier
        self.student = ss_head(self.teacher.backbone.num_features)

    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        build_sskd_teacher(cfg, data.num_classes, with_head=False)

    def forward(self, batch: Batch, step: Step) -> LossDict:
        x = batch.views[0]
        b = x.shape[0]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step.it)
        with torch.no_grad():
            feat = self.teacher(torch.cat([x, L.transformed_views(x, self.mcfg.transforms, g)]))
        z = self.student(feat.feat.float())
        loss, acc = L.contrastive_loss(L.similarity(z[b:], z[:b]), self.mcfg.tau)
        return {"loss": loss, "ss": loss.detach(), "ss_acc": 100.0 * acc}

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C): the frozen teacher's logits (its accuracy is what is tracked)."""
        return self.teacher(x).logits

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self.teacher(x).feat

    def checkpoint_state(self) -> dict[str, dict]:
        return {"teacher": self.teacher.state_dict(), "ss_head": unwrap(self.student).state_dict()}

    def load_checkpoint_state(self, state: dict[str, dict], strict: bool = True) -> None:
        self.teacher.load_state_dict(state["teacher"], strict=strict)
        unwrap(self.student).load_state_dict(state["ss_head"], strict=strict)
