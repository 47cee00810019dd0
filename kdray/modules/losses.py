"""Loss functions shared by several methods (pure functions of tensors)."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("batchmean", "none", "masked", "sum")


def kl_div(s_logits: Tensor, t_logits: Tensor, tau: float = 1.0, *,
           reduction: str = "batchmean", mask: Tensor | None = None, scale_tau2: bool = True,
           dim: int = -1) -> Tensor:
    """Temperature-scaled KL(softmax(t/tau) || softmax(s/tau)) over `dim` (Hinton et al. 2015),
    times tau^2 when `scale_tau2`. The one KL of kdray: KD, SSKD, CSKD and M2SD all use it.

    Args:
        s_logits: student logits (..., C, ...); t_logits: teacher (target) logits, same shape.
            No dtype cast here: callers that want float32 pass `.float()` tensors.
        tau: temperature > 0.
        reduction: "none" = per-row KL (`dim` summed out, no tau^2); "batchmean" = mean of the
            rows; "masked" = mean over the rows where `mask` (bool, row-shaped) is True, 0 (still
            connected to `s_logits`) when none is; "sum" = sum over every element (callers divide,
            e.g. by the batch size for torch's `batchmean` of a dense map).
        scale_tau2: multiply the reduced value by tau^2 (Hinton's gradient-scale convention).
        dim: the class dimension.
    Returns:
        0-dim loss, or the per-row KL for reduction="none".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"kl_div: reduction {reduction!r}; choose from {REDUCTIONS}")
    log_p_s = F.log_softmax(s_logits / tau, dim=dim)
    log_p_t = F.log_softmax(t_logits / tau, dim=dim)
    pointwise = log_p_t.exp() * (log_p_t - log_p_s)
    if reduction == "sum":
        out = pointwise.sum()
    else:
        rows = pointwise.sum(dim=dim)
        if reduction == "none":
            return rows
        if reduction == "batchmean":
            out = rows.mean()
        else:
            if mask is None:
                raise ValueError("kl_div: reduction='masked' needs a mask")
            # masked mean rather than boolean indexing: no host sync, 0 when nothing is kept
            w = mask.to(rows.dtype)
            out = (rows * w).sum() / w.sum().clamp(min=1.0)
    return out * tau * tau if scale_tau2 else out


def soft_ce(t_probs: Tensor, s_logits: Tensor, s_temp: float) -> Tensor:
    """H(p_t, softmax(s/s_temp)) per row: (..., K) -> (...)."""
    return -(t_probs * F.log_softmax(s_logits / s_temp, dim=-1)).sum(-1)


def weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """sum_k weights[k] * terms[k], in the order of `terms`: the total loss of a method whose
    config names the weight of term `k` `w_<k>` (pass `weights(mcfg, terms)` or a dict)."""
    total = None
    for k, v in terms.items():
        total = weights[k] * v if total is None else total + weights[k] * v
    if total is None:
        raise ValueError("weighted_sum: no terms")
    return total


def term_weights(mcfg: object, terms: Mapping[str, Tensor]) -> dict[str, float]:
    """{k: mcfg.w_<k>} for every term k: the weighting convention of kdray's method configs."""
    return {k: getattr(mcfg, f"w_{k}") for k in terms}
