"""Cumulative Spatial KD (CSKD) pieces as pure functions: the alpha schedule of cumulative
knowledge fusion, fused dense targets, student-to-teacher grid pooling and the loss terms.

Notation (docs/methods/cskd.md §4): P_T (B, C, h, w) teacher dense logits, P_T,global (B, C) their spatial
mean, P_S (B, N, C) student dense logits on an (hs, ws) patch grid.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from kdray.modules.losses import kl_div
from kdray.schedules import cosine

# Decay shapes f(x), x = epoch / epochs in [0, 1]: f(0) = 1, f(1) = 0, non-increasing.
# linear / x2 / cos are the official `cskd_decay_func` values (cskd/cskd.py); cosine is kdray's
# half-cosine (schedules.cosine); constant keeps alpha at its start value (alpha = 1: local only).
SHAPES = {
    "linear": lambda x: 1.0 - x,
    "x2": lambda x: (1.0 - x) ** 2,
    "cos": lambda x: math.cos(math.pi * 0.5 * x),
    "cosine": lambda x: cosine(x, 1.0, 0.0),
    "constant": lambda x: 1.0,
}


def alpha_at(epoch: int, epochs: int, *, shape: str = "linear", start: float = 1.0,
             end: float = 0.0) -> float:
    """Weight of the local (dense) teacher response at `epoch` (0-based) of `epochs`.

    alpha = end + (start - end) * f(epoch / epochs), stepped once per epoch as in the official
    code, so with the defaults alpha runs 1, 1 - 1/E, ..., 1/E (never exactly 0).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown alpha schedule {shape!r}; choose one of {sorted(SHAPES)}")
    x = min(max(epoch / max(1, epochs), 0.0), 1.0)
    return end + (start - end) * SHAPES[shape](x)


def fuse_teacher(t_dense: Tensor, alpha: float) -> Tensor:
    """Cumulative knowledge fusion on logits: alpha * P_T + (1 - alpha) * P_T,global.

    Args:
        t_dense: (B, C, h, w) teacher dense logits.
        alpha: weight of the local response.

    Returns:
        (B, C, h, w) fused logits (their argmax over C is Y_T).
    """
    t_global = t_dense.mean(dim=(2, 3), keepdim=True)
    return alpha * t_dense + (1.0 - alpha) * t_global


def pool_student(s_dense: Tensor, grid: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """Student dense logits pooled to the teacher grid, as logits (CSKD: 14x14 -> 7x7 average).

    Args:
        s_dense: (B, N, C) with N = grid[0] * grid[1], row-major.
        grid: the student's patch grid (hs, ws).
        out: the teacher grid (h, w); each must divide the student's (checked in preflight).

    Returns:
        (B, C, h, w).
    """
    b, n, c = s_dense.shape
    x = s_dense.transpose(1, 2).reshape(b, c, grid[0], grid[1])
    if tuple(grid) == tuple(out):
        return x
    return F.adaptive_avg_pool2d(x, out)


def cskd_hard(s_pooled: Tensor, t_fused: Tensor) -> Tensor:
    """L_CSKD (hard): CE(P_S, argmax_c fused), mean over B x h x w positions.

    Args:
        s_pooled: (B, C, h, w) student logits on the teacher grid.
        t_fused: (B, C, h, w) fused teacher logits.
    """
    return F.cross_entropy(s_pooled.float(), t_fused.argmax(dim=1))


def cskd_soft(s_pooled: Tensor, t_fused: Tensor, tau: float) -> Tensor:
    """L_CSKD (soft): tau^2 * KL(softmax(t/tau) || softmax(s/tau)) over classes, summed over the
    h x w positions and averaged over the batch (the official scale, not a per-position mean).

    Args:
        s_pooled: (B, C, h, w) student logits on the teacher grid.
        t_fused: (B, C, h, w) fused teacher logits.
        tau: temperature.
    """
    return kl_div(s_pooled.float(), t_fused.float(), tau, reduction="sum", dim=1) / s_pooled.shape[0]


def distill_hard(s_dist: Tensor, t_global: Tensor) -> Tensor:
    """DeiT hard distillation: CE(distillation-token logits (B, C), argmax teacher (B, C))."""
    return F.cross_entropy(s_dist.float(), t_global.argmax(dim=1))


def distill_soft(s_dist: Tensor, t_global: Tensor, tau: float) -> Tensor:
    """DeiT soft distillation: tau^2 * KL summed over classes and batch, divided by B * C (the
    official `numel` scaling)."""
    return kl_div(s_dist.float(), t_global.float(), tau, reduction="sum", dim=1) / s_dist.numel()
