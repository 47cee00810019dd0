"""Decoupled KD's two terms (Zhao et al., CVPR 2022, arXiv:2203.08679, Sec. 3.1): pure functions.

With p = softmax(z / T) over C classes and target class t:
- TCKD = KL(b_T || b_S) on the binary split b = (p_t, 1 - p_t): how sure each net is of the
  target class.
- NCKD = KL(q_T || q_S) with q_i = p_i / (1 - p_t) over the classes i != t: how the non-target
  mass is shared out. The target logit is left out exactly (the official code subtracts 1000
  from it before the softmax, which differs by < 1e-6 in float32).
Both are summed over their support, scaled by T^2 and averaged over the batch (reduction
"batchmean"), or returned per row (reduction "none"). Classic KD decomposes as
KD = TCKD + (1 - p_t^T) * NCKD per row (Eq. 1), which tests/test_dkd.py checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(rows: Tensor, tau: float, reduction: str) -> Tensor:
    rows = rows * (tau * tau)
    if reduction == "none":
        return rows
    if reduction == "batchmean":
        return rows.mean()
    raise ValueError(f"reduction must be 'batchmean' or 'none', got {reduction!r}")


def _scaled(logits: Tensor, tau: float) -> Tensor:
    """logits / tau in at least float32 (half-precision logits are upcast; float64 is kept)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits / tau


def binary_log_probs(logits: Tensor, target: Tensor, tau: float) -> Tensor:
    """(B, C) logits, (B,) targets -> (B, 2) log-probabilities (log p_t, log(1 - p_t)) of
    softmax(logits / tau), computed in log space (no 1 - p cancellation)."""
    z = _scaled(logits, tau)
    log_all = torch.logsumexp(z, dim=1)
    gt = F.one_hot(target, z.shape[1]).bool()
    log_t = z.gather(1, target[:, None]).squeeze(1) - log_all
    log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - log_all
    return torch.stack([log_t, log_rest], dim=1)


def non_target_log_probs(logits: Tensor, target: Tensor, tau: float) -> Tensor:
    """(B, C) -> (B, C) log q over the non-target classes; the target column holds 0 (a
    placeholder that contributes exp(0) * (0 - 0) = 0 to a KL of two such tensors)."""
    z = _scaled(logits, tau)
    gt = F.one_hot(target, z.shape[1]).bool()
    return F.log_softmax(z.masked_fill(gt, float("-inf")), dim=1).masked_fill(gt, 0.0)


def tckd(s_logits: Tensor, t_logits: Tensor, target: Tensor, tau: float,
         reduction: str = "batchmean") -> Tensor:
    """Target-class KD: T^2 * KL(b_T || b_S) on the (target, rest) split."""
    log_b_s = binary_log_probs(s_logits, target, tau)
    log_b_t = binary_log_probs(t_logits, target, tau)
    rows = F.kl_div(log_b_s, log_b_t, reduction="none", log_target=True).sum(1)
    return _reduce(rows, tau, reduction)


def nckd(s_logits: Tensor, t_logits: Tensor, target: Tensor, tau: float,
         reduction: str = "batchmean") -> Tensor:
    """Non-target-class KD: T^2 * KL(q_T || q_S) over the classes other than the target."""
    log_q_s = non_target_log_probs(s_logits, target, tau)
    log_q_t = non_target_log_probs(t_logits, target, tau)
    rows = F.kl_div(log_q_s, log_q_t, reduction="none", log_target=True).sum(1)
    return _reduce(rows, tau, reduction)


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """Linear warm-up of the KD terms: min((epoch + 1) / warmup_epochs, 1) with a 0-based epoch,
    i.e. the official code's min(epoch / 20, 1) with its 1-based epoch; 1 when warmup_epochs=0."""
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)
