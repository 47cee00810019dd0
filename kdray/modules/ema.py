"""Exponential-moving-average teachers (DINO / iBOT / SMKD: teacher = EMA of the student).

The teacher is a deep copy of the (unwrapped) student with `requires_grad_(False)`, kept in eval
mode (`Method.train` re-applies `eval()` to `self.teacher` on every `train()` call), so its
dropout / drop-path are off and any BatchNorm uses running statistics; buffers are copied from the
student at each update rather than averaged. It is never wrapped in DDP: every rank computes the
same update from the same (all-reduced) student weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdray.dist import unwrap
from kdray.schedules import cosine


def frozen_copy(student: nn.Module) -> nn.Module:
    """A gradient-free eval-mode deep copy of `student` (unwrapped from DDP first)."""
    teacher = copy.deepcopy(unwrap(student))
    teacher.requires_grad_(False)
    return teacher.eval()


def ema_momentum(progress: float, base: float) -> float:
    """Teacher momentum: half-cosine from `base` at progress 0 to 1.0 at progress 1 (DINO)."""
    return cosine(progress, base, 1.0)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: teacher <- momentum * teacher + (1 - momentum) * student; buffers are copied.

    Args:
        teacher: the EMA copy (same parameter names and shapes as `student`).
        student: the trained module, possibly DDP-wrapped (it is unwrapped here).
        momentum: in [0, 1]; 1 leaves the teacher unchanged.
    """
    student = unwrap(student)
    t_named = dict(teacher.named_parameters())
    s_named = dict(student.named_parameters())
    if t_named.keys() != s_named.keys():
        raise ValueError("teacher and student parameter names differ: "
                         f"{sorted(set(t_named) ^ set(s_named))[:5]}")
    t_params = [t_named[k] for k in s_named]
    s_params = [s_named[k].detach() for k in s_named]
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
    t_bufs = dict(teacher.named_buffers())
    for name, buf in student.named_buffers():
        t_bufs[name].copy_(buf)
