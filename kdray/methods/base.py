"""The method contract: a batch goes in, a loss dict comes out.

A method owns `student` (everything that trains, the single DDP entry point) and optionally
`teacher` (frozen or EMA; never DDP-wrapped, always in eval mode). `forward` returns a dict whose
`loss` entry is the only tensor the engine backpropagates; every other entry is an unweighted
0-dim term for logging.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from kdray.dist import unwrap
from kdray.types import Batch, DataInfo, LossDict, Step

if TYPE_CHECKING:
    from kdray.config import ExperimentConfig


class Method(nn.Module):
    """Base class of every method (see module docstring)."""

    Config: ClassVar[type]
    #: what the method needs from the data pipeline; checked before any run starts.
    needs_labels: ClassVar[bool] = True
    #: whether `forward` applies `batch.mix` (mixup/CutMix drawn in collate); checked in preflight.
    supports_mix: ClassVar[bool] = False
    #: how `teacher` changes while training: "frozen" (never) or "ema" (moved by `after_step`).
    teacher_update: ClassVar[str] = "frozen"

    def __init__(self, cfg: ExperimentConfig, *, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mcfg = cfg.method_cfg
        self.num_classes = num_classes
        self.teacher: nn.Module | None = None

    # ------------------------------------------------------------------ checks (driver side)
    @classmethod
    def preflight(cls, cfg: ExperimentConfig, data: DataInfo) -> None:
        """Raise ConfigError for settings this method cannot run with (before Ray starts)."""

    @classmethod
    def teacher_card_checks(cls, cfg: ExperimentConfig) -> dict:
        """What the registry card of `model.teacher_ckpt` must satisfy besides its checksum,
        architecture, dataset and class count (keyword arguments of
        `kdray.modules.teachers.check_teacher_card`): a method configuring
        `teacher_min_acc` expects that recorded top-1."""
        return {"min_top1": float(getattr(cfg.method_cfg, "teacher_min_acc", 0.0))}

    # ------------------------------------------------------------------ training
    def forward(self, batch: Batch, step: Step) -> LossDict:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_after_backward(self, step: Step) -> None:
        """Hook between backward and the optimizer step (e.g. freezing a layer's gradient)."""

    @torch.no_grad()
    def after_step(self, step: Step) -> None:
        """Hook after `optimizer.step()` (EMA update, centre refresh)."""

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # teacher BN/dropout stay in eval mode throughout
        return self

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Student parameters; biases and 1-D parameters (norms) get no weight decay."""
        decay, no_decay = [], []
        for name, p in unwrap(self.student).named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0, "no_decay": True}]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, D) features used by the few-shot evaluator."""
        return unwrap(self.student)(x).feat

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_classes) logits used by the top-1 evaluator."""
        return unwrap(self.student)(x).logits

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor | None:
        """(B, C, H, W) -> (B, num_classes) logits of a frozen classifier teacher, or None for
        methods without one; the top-1 evaluator reports the teacher's top-1 and the
        teacher-student agreement from them."""
        return None

    # ------------------------------------------------------------------ checkpoints
    def init_from_checkpoint(self, path: str) -> None:
        """Start from the model weights of a kdray checkpoint (`train.init_from`)."""
        from kdray.checkpoint import load_checkpoint

        self.load_checkpoint_state(load_checkpoint(path)["model"])

    def checkpoint_state(self) -> dict[str, dict]:
        """State dicts of each child module, unwrapped from DDP (keys independent of world size)."""
        return {name: unwrap(m).state_dict() for name, m in self.named_children()}

    def load_checkpoint_state(self, state: dict[str, dict], strict: bool = True) -> None:
        for name, m in self.named_children():
            if name in state:
                unwrap(m).load_state_dict(state[name], strict=strict)
            elif strict:
                raise KeyError(f"checkpoint has no state for {name!r}; it has {sorted(state)}")
