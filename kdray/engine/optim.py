"""Optimizer construction and per-step hyper-parameter schedules (pure functions of progress)."""

from __future__ import annotations

import torch

from kdray.config import OptimConfig
from kdray.methods.base import Method
from kdray.schedules import cosine, lr_at


def build_optimizer(method: Method, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = method.param_groups(cfg.weight_decay)
    groups = [g for g in groups if g["params"]]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def apply_schedules(opt: torch.optim.Optimizer, cfg: OptimConfig, progress: float,
                    total_epochs: int) -> tuple[float, float]:
    """Set lr (and weight decay, when scheduled) for this step; returns (lr, wd)."""
    warmup = cfg.warmup_epochs / total_epochs
    milestones = tuple(m / total_epochs for m in cfg.milestones)
    lr = lr_at(progress, base=cfg.lr, kind=cfg.schedule, min_lr=cfg.min_lr, warmup=warmup,
               milestones=milestones, gamma=cfg.gamma)
    wd = cfg.weight_decay
    if cfg.weight_decay_end >= 0:
        wd = cosine(progress, cfg.weight_decay, cfg.weight_decay_end)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        if not g.get("no_decay"):
            g["weight_decay"] = wd
    return lr, wd
