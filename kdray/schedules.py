"""Schedules as pure functions of training progress in [0, 1] (no arrays stored in modules)."""

from __future__ import annotations

import math


def cosine(progress: float, start: float, end: float, warmup: float = 0.0,
           warmup_start: float = 0.0) -> float:
    """Linear warm-up from `warmup_start` to `start` over the first `warmup` fraction, then a
    half-cosine from `start` to `end`. `progress` is clamped to [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return warmup_start + (start - warmup_start) * p / warmup
    q = (p - warmup) / max(1e-12, 1.0 - warmup)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * q))


def linear(progress: float, start: float, end: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    return start + (end - start) * p


def warmup_then_constant(progress: float, start: float, end: float, warmup: float) -> float:
    """Linear from `start` to `end` over the first `warmup` fraction, then `end` (DINO teacher temp)."""
    if warmup <= 0:
        return end
    return linear(min(1.0, progress / warmup), start, end)


def step_decay(progress: float, base: float, milestones: tuple[float, ...], gamma: float,
               warmup: float = 0.0) -> float:
    """`base` times `gamma` per passed milestone (milestones as progress fractions)."""
    if warmup > 0 and progress < warmup:
        return base * progress / warmup
    return base * gamma ** sum(progress >= m for m in milestones)


def lr_at(progress: float, *, base: float, kind: str, min_lr: float = 0.0, warmup: float = 0.0,
          milestones: tuple[float, ...] = (), gamma: float = 0.1) -> float:
    """Learning rate for the engine: `kind` is "cosine", "step" or "constant"."""
    if kind == "cosine":
        return cosine(progress, base, min_lr, warmup)
    if kind == "step":
        return step_decay(progress, base, milestones, gamma, warmup)
    if kind == "constant":
        return base if warmup <= 0 or progress >= warmup else base * progress / warmup
    raise ValueError(f"unknown lr schedule {kind!r}; choose cosine, step or constant")
