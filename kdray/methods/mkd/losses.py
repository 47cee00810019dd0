"""MKD losses (docs/methods/mkd.md §2.2): masked feature regression L_feat and the FGD global loss.

- L_feat = sum_i 1/(2 N_i) ||norm(F_T,i) - norm(F_hat_S,i)||^2, N_i = C_i H_i W_i, summed over all
  positions as in the paper's formula and averaged over the batch [inferred: the formula is per
  image]. `masked_only=True` restricts the sum, and N_i, to masked positions (MAE-style)
  [inferred ablation]. `norm` [inferred: type not retrieved]: "channel" (default) standardises each
  channel over its H x W positions per image (parameter-free instance norm), "layernorm"
  standardises each position over its C channels (affine-free LayerNorm over C), "none".
- L_global = sum_i ||R_T,i(F_T,i) - R_S,i(F_hat_S,i)||^2 / B with FGD's GcBlock R (one trainable
  teacher-side and one student-side block per level; FGD `get_rela_loss` reduction: summed squared
  error divided by the batch size).

Teacher features are always detached inside the losses (sg(F_T)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdray.methods.mkd.mask import level_mask

NORMS = ("channel", "layernorm", "none")


def normalize(x: Tensor, kind: str = "channel", eps: float = 1e-6) -> Tensor:
    """Parameter-free standardisation of a (B, C, H, W) map.

    Args:
        x: (B, C, H, W) features.
        kind: "channel" (per image and channel over H x W), "layernorm" (per position over C) or
            "none".
        eps: added to the variance (biased variance, as LayerNorm).

    Returns:
        (B, C, H, W) tensor.
    """
    if kind == "none":
        return x
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    dims = (2, 3) if kind == "channel" else (1,)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def feat_loss(t_feats: list[Tensor], s_feats: list[Tensor], *, mask: Tensor | None = None,
              masked_only: bool = False, norm: str = "channel") -> Tensor:
    """L_feat: masked feature regression summed over FPN levels (paper Eq. for L_feat).

    Args:
        t_feats: teacher levels, (B, C_i, H_i, W_i) each (detached here).
        s_feats: decoder outputs F_hat_S,i, same shapes.
        mask: (B, 1, gh, gw) bool grid mask (True = masked); needed when `masked_only`.
        masked_only: sum only over masked positions, each weighted by its masked fraction
            (`level_mask`: 0/1 on P3-P5, the fraction of masked stride-32 cells on P6/P7), and
            divide by 2 C_i times the total weight instead of 2 N_i B.
        norm: normalisation of both sides before the MSE (see `normalize`).

    Returns:
        0-dim loss.
    """
    if len(t_feats) != len(s_feats):
        raise ValueError(f"{len(t_feats)} teacher levels vs {len(s_feats)} student levels")
    if masked_only and mask is None:
        raise ValueError("masked_only needs the grid mask")
    total = s_feats[0].new_zeros(())
    for t, s in zip(t_feats, s_feats):
        if t.shape != s.shape:
            raise ValueError(f"teacher {tuple(t.shape)} vs student {tuple(s.shape)}")
        sq = (normalize(t.detach(), norm) - normalize(s, norm)).pow(2)
        if masked_only:
            w = level_mask(mask, (s.shape[-2], s.shape[-1])).to(sq.dtype)  # (B, 1, H_i, W_i)
            total = total + (sq * w).sum() / (2 * s.shape[1] * w.sum()).clamp_min(1e-12)
        else:
            total = total + sq.sum() / (2 * sq.numel())  # 1/(2N_i) per image, mean over B
    return total


class GcBlock(nn.Module):
    """FGD's global-context block R(F) = F + W_v2 ReLU(LN(W_v1 sum_j alpha_j F_j)).

    alpha = softmax over the H*W positions of W_k F (W_k: 1x1 conv C -> 1, Kaiming fan-in, bias 0);
    W_v1: 1x1 conv C -> C/2 (PyTorch default init); LN over (C/2, 1, 1); W_v2: 1x1 conv C/2 -> C,
    weight and bias zero-initialised so R starts as the identity (FGD `last_zero_init`).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 2)
        self.key = nn.Conv2d(channels, 1, 1)
        self.value = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.LayerNorm([hidden, 1, 1]),
                                   nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.key.bias)
        nn.init.zeros_(self.value[-1].weight)
        nn.init.zeros_(self.value[-1].bias)

    def context(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) attention-pooled global context sum_j alpha_j F_j."""
        alpha = self.key(x).flatten(1).softmax(dim=1)  # (B, HW)
        return torch.einsum("bn,bcn->bc", alpha, x.flatten(2))[..., None, None]

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W); the added context is the same at every position."""
        return x + self.value(self.context(x))


class GlobalRelationLoss(nn.Module):
    """FGD global loss over FPN levels with separate teacher- and student-side GcBlocks.

    Both blocks of each level are trainable (they belong to the loss, train-only). Only the
    teacher *features* are detached; the teacher-side block still learns through the loss.

    Args:
        channels: channels C_T of every level.
        num_levels: number of FPN levels (5 for RetinaNet P3-P7, 4 for Faster R-CNN P2-P5).
    """

    def __init__(self, channels: int, num_levels: int) -> None:
        super().__init__()
        self.teacher_blocks = nn.ModuleList(GcBlock(channels) for _ in range(num_levels))
        self.student_blocks = nn.ModuleList(GcBlock(channels) for _ in range(num_levels))

    def forward(self, t_feats: list[Tensor], s_feats: list[Tensor]) -> Tensor:
        """sum_i ||R_T,i(sg F_T,i) - R_S,i(F_hat_S,i)||^2 / B as a 0-dim tensor."""
        if not len(t_feats) == len(s_feats) == len(self.student_blocks):
            raise ValueError(f"{len(t_feats)} teacher / {len(s_feats)} student levels for "
                             f"{len(self.student_blocks)} GcBlock pairs")
        total = s_feats[0].new_zeros(())
        for rt, rs, t, s in zip(self.teacher_blocks, self.student_blocks, t_feats, s_feats):
            total = total + F.mse_loss(rs(s), rt(t.detach()), reduction="sum") / s.shape[0]
        return total
