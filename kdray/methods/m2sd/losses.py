"""Pure loss functions of M2SD (docs/methods/m2sd.md §5.2): symmetric KL (the KL to a soft label is
`kdray.modules.losses.kl_div`), attention transfer (Zagoruyko & Komodakis, ICLR 2017, p = 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdray.modules.losses import kl_div


def soft_label_kl(p_logits: Tensor, q_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(p ‖ q) of softmax(·/T), batch mean, times T² (M2SD's argument order: target first;
    `kl_div(s, t)` is KL(t ‖ s)). T² is one factor, as M2SD has always computed it."""
    kl = kl_div(q_logits.float(), p_logits.float(), temperature, scale_tau2=False)
    return kl * temperature**2


def symmetric_kl(a_logits: Tensor, b_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(a ‖ b) + KL(b ‖ a) (Eq. L_KL^v), gradients through both sides."""
    return (soft_label_kl(a_logits, b_logits, temperature)
            + soft_label_kl(b_logits, a_logits, temperature))


def attention_map(feat: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W): L2-normalised Σ_c F_c² (channel mean and sum normalise alike)."""
    return F.normalize(feat.float().pow(2).sum(dim=1).flatten(1), dim=1)


def at_loss(t_feats: Sequence[Tensor], s_feats: Sequence[Tensor]) -> Tensor:
    """Σ_levels batch-mean ‖at(T_i) − at(φ_i)‖²₂; map pairs must share their spatial size."""
    total = torch.zeros((), device=s_feats[0].device)
    for t, s in zip(t_feats, s_feats, strict=True):
        total = total + (attention_map(t) - attention_map(s)).pow(2).sum(dim=1).mean()
    return total
