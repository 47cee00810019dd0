"""Training-health signals of a distillation target, logged with the loss terms each step.

A self-distillation teacher can collapse in two ways (DINO, Sec. 5.3): to the uniform
distribution (the centre dominates: entropy ~ log K) or onto one prototype for every image (the
sharpening dominates). `teacher_health` measures both on the teacher's output distributions;
`collapse_flag` turns a run's epoch means into a verdict the results table shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

UNIFORM = 0.98      # entropy >= 0.98 log K: as flat as a uniform distribution
ONE_HOT = 0.98      # mean max-probability at least this, with one argmax for the whole batch


@torch.no_grad()
def teacher_health(probs: Tensor) -> dict[str, Tensor]:
    """(..., K) teacher distributions -> 0-dim tensors:
    `t_entropy` (mean entropy as a fraction of log K), `t_maxprob` (mean max-probability) and
    `t_one_prototype` (1 when every row puts >= ONE_HOT on the same prototype, else 0)."""
    p = probs.detach().float().reshape(-1, probs.shape[-1])
    k = p.shape[-1]
    entropy = -(torch.special.xlogy(p, p)).sum(-1) / math.log(k)
    maxprob, arg = p.max(-1)
    one = (maxprob.min() >= ONE_HOT) & (arg == arg[0]).all()
    return {"t_entropy": entropy.mean(), "t_maxprob": maxprob.mean(), "t_one_prototype": one.float()}


def collapse_flag(metrics: Mapping[str, float], prefix: str = "train/") -> str:
    """'collapsed (uniform)', 'collapsed (one prototype)', 'ok', or '' when the run logged no
    teacher health (methods without a self-distillation target)."""
    ent = metrics.get(f"{prefix}t_entropy")
    if ent is None:
        return ""
    if ent >= UNIFORM:
        return "collapsed (uniform)"
    if metrics.get(f"{prefix}t_one_prototype", 0.0) >= 0.5:
        return "collapsed (one prototype)"
    return "ok"
