"""Loss functions shared by several methods (pure functions of tensors)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_kl(s_logits: Tensor, t_logits: Tensor, tau: float) -> Tensor:
    """Hinton et al. 2015 distillation loss: tau^2 * KL(softmax(t/tau) || softmax(s/tau)),
    summed over classes and averaged over the batch.

    Args:
        s_logits: (B, C) student logits.
        t_logits: (B, C) teacher logits (no gradient needed).
        tau: temperature > 0.
    """
    log_p_s = F.log_softmax(s_logits / tau, dim=-1)
    log_p_t = F.log_softmax(t_logits / tau, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * tau * tau


def soft_ce(t_probs: Tensor, s_logits: Tensor, s_temp: float) -> Tensor:
    """H(p_t, softmax(s/s_temp)) per row: (..., K) -> (...)."""
    return -(t_probs * F.log_softmax(s_logits / s_temp, dim=-1)).sum(-1)
