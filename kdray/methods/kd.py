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

from kdray.config import ConfigError, check_range
from kdray.engine.checkpoint import state_mismatch
from kdray.methods.base import Method
from kdray.methods.ce import build_student
from kdray.modules.backbones import Classifier, build_backbone
from kdray.modules.losses import kd_kl
from kdray.search import Float
from kdray.types import Batch, LossDict, Step

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


def load_model_state(path: str) -> dict[str, torch.Tensor]:
    """Model weights from a kdray checkpoint (its `student`) or a plain state_dict file."""
    import os

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


def build_teacher(cfg: ExperimentConfig, num_classes: int) -> Classifier:
    """Frozen classifier teacher; raises ConfigError when the checkpoint does not fit."""
    arch = cfg.model.teacher_arch or cfg.model.arch
    teacher = Classifier(build_backbone(arch, image_size=cfg.data.image_size), num_classes)
    if not cfg.model.teacher_ckpt:
        raise ConfigError("model.teacher_ckpt: method 'kd' needs a trained teacher checkpoint")
    state = load_model_state(cfg.model.teacher_ckpt)
    why = state_mismatch(teacher.state_dict(), state)
    if why:
        raise ConfigError(f"model.teacher_ckpt {cfg.model.teacher_ckpt!r} does not fit teacher arch "
                          f"{arch!r} with {num_classes} classes: {why}")
    teacher.load_state_dict(state)
    teacher.requires_grad_(False)
    return teacher.eval()


class KD(Method):
    """Hinton KD from a frozen teacher checkpoint."""

    Config = KDConfig

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.student = build_student(cfg, num_classes)
        self.teacher = build_teacher(cfg, num_classes)

    @classmethod
    def preflight(cls, cfg: ExperimentConfig) -> None:
        from kdray.data import num_train_classes

        build_teacher(cfg, num_train_classes(cfg))

    def forward(self, batch: Batch, step: Step) -> LossDict:
        x = batch.views[0]
        s = self.student(x)
        with torch.no_grad():
            t = self.teacher(x)
        ce = F.cross_entropy(s.logits, batch.labels)
        kd = kd_kl(s.logits, t.logits.float(), self.mcfg.tau)
        return {"loss": self.mcfg.w_ce * ce + self.mcfg.w_kd * kd, "ce": ce.detach(),
                "kd": kd.detach()}
