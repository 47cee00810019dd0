"""Centring of teacher outputs (DINO): subtract an EMA of the batch mean to avoid collapse."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdray.dist import all_reduce_sum


class Center(nn.Module):
    """A (1, dim) centre c, updated as c <- m * c + (1 - m) * mean(teacher outputs over all ranks).

    The mean is taken over every row of every rank: sums and row counts are all-reduced together
    (one collective), so it equals the single-process mean of the concatenated batch even when
    ranks hold different numbers of rows. Outside a process group it is the local mean.

    Args:
        dim: output size K.
        momentum: EMA momentum m (DINO/iBOT/SMKD: 0.9).
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(..., K) -> (..., K) centred outputs x - c."""
        return x - self.center.to(x.dtype)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold the mean of `x` (..., K) over all leading dims and all ranks into the centre."""
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        stats = torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])])
        stats = all_reduce_sum(stats)
        mean = (stats[:-1] / stats[-1].clamp(min=1.0)).unsqueeze(0)
        self.center.mul_(self.momentum).add_(mean.to(self.center.dtype), alpha=1.0 - self.momentum)
