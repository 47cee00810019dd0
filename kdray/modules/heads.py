"""Projection heads for self-distillation (DINO / iBOT / SMKD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class IBOTHead(nn.Module):
    """iBOT projection head, shared by [CLS] and patch tokens (SMKD `shared_head=True`).

    MLP (in -> hidden -> hidden -> bottleneck, GELU, no norm) -> L2-normalise -> weight-normalised
    linear bottleneck -> out_dim without bias. Weight normalisation is written out here
    (w = g * v / ||v|| per output row) rather than with `torch.nn.utils` parametrisations, so the
    head deep-copies and EMA-updates like any module. With `norm_last_layer=True` the gain g is
    fixed to 1 and not built at all, so no frozen parameter reaches the optimizer.

    Args:
        in_dim: backbone feature size D.
        out_dim: number of prototypes K (paper 8192).
        hidden_dim: MLP width (paper 2048).
        bottleneck_dim: L2-normalised bottleneck size (paper 256).
        norm_last_layer: fix the last layer's gain to 1 (SMKD student: False).
    """

    def __init__(self, in_dim: int, *, out_dim: int = 8192, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = _WeightNormLinear(bottleneck_dim, out_dim, learn_gain=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) tokens -> (..., out_dim) logits."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class _WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight w = g * v / ||v|| per output row (g = 1 if not learnt)."""

    def __init__(self, in_dim: int, out_dim: int, *, learn_gain: bool) -> None:
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(v, a=5 ** 0.5)  # nn.Linear's default initialisation
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1)) if learn_gain else None

    def forward(self, x: Tensor) -> Tensor:
        w = F.normalize(self.weight_v, dim=1)
        if self.weight_g is not None:
            w = w * self.weight_g
        return F.linear(x, w)
