"""M2SD's train-only feature-enhancement (FE) module: FE(x) = BiFPN(EN(φ(x))) plus a temporary
classifier W′ (docs/methods/m2sd.md §5.1).

- EN applies one attention block per backbone stage: multi-head self-attention over spatial
  positions (``SpatialMHSA``) or coordinate attention (``CoordAttention``, Hou et al., CVPR 2021).
  The paper's 4-stage layout is (MHSA, CA, CA, MHSA); for the 3-stage CIFAR ResNet-20 kdray keeps
  "MHSA at both ends, CA in between": (MHSA, CA, MHSA) [inferred; `default_layout`].
- MHSA [inferred details]: pre-LayerNorm `nn.MultiheadAttention` on tokens of the map average-
  pooled to at most ``max_side`` x ``max_side`` (ResNet-18 stage 1 at 56x56 would be 3,136 tokens),
  a depthwise 3x3 convolution as positional encoding (CPVT-style), the output upsampled
  (bilinear) and added to the input.
- BiFPN (EfficientDet) [inferred details]: 1x1 conv + BN aligns each level to ``channels``; one
  top-down and one bottom-up pass with fast normalised fusion O = Σ w_i I_i / (ε + Σ w_j),
  w = ReLU(learnable), ε = 1e-4; each fusion node is a depthwise-separable 3x3 conv + BN + SiLU;
  upsampling nearest, downsampling adaptive max-pool. Outputs T_i keep the input resolutions.
- W′: global average pooling of T_last + linear layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def default_layout(num_stages: int) -> tuple[str, ...]:
    """MHSA on the first and last stage, CA in between: 4 -> (mhsa, ca, ca, mhsa)."""
    if num_stages == 1:
        return ("mhsa",)
    return ("mhsa",) + ("ca",) * (num_stages - 2) + ("mhsa",)


class CoordAttention(nn.Module):
    """Coordinate attention: x * a_h * a_w with gates from direction-wise pooled features.

    Args:
        channels: C of the (B, C, H, W) input.
        reduction: mid width = max(min_mid, C // reduction).
        min_mid: smallest mid width.
    """

    def __init__(self, channels: int, reduction: int = 32, min_mid: int = 8) -> None:
        super().__init__()
        mid = max(min_mid, channels // reduction)
        self.reduce = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                    nn.Hardswish())
        self.gate_h = nn.Conv2d(mid, channels, 1)
        self.gate_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        h, w = x.shape[-2:]
        pooled_h = x.mean(dim=3, keepdim=True)                      # (B, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)      # (B, C, W, 1)
        y = self.reduce(torch.cat([pooled_h, pooled_w], dim=2))     # (B, mid, H + W, 1)
        y_h, y_w = y.split([h, w], dim=2)
        a_h = torch.sigmoid(self.gate_h(y_h))                       # (B, C, H, 1)
        a_w = torch.sigmoid(self.gate_w(y_w.transpose(2, 3)))       # (B, C, 1, W)
        return x * a_h * a_w


class SpatialMHSA(nn.Module):
    """Residual multi-head self-attention over the (pooled) spatial positions of a map.

    Args:
        channels: C of the (B, C, H, W) input.
        heads: attention heads (reduced to gcd(heads, C) so that they divide C).
        max_side: maps larger than this are average-pooled to at most max_side x max_side tokens.
    """

    def __init__(self, channels: int, heads: int = 4, max_side: int = 16) -> None:
        super().__init__()
        self.max_side = max_side
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, math.gcd(heads, channels), batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        size = (min(h, self.max_side), min(w, self.max_side))
        y = F.adaptive_avg_pool2d(x, size) if size != (h, w) else x
        y = y + self.pos(y)
        tokens = self.norm(y.flatten(2).transpose(1, 2))            # (B, N, C)
        out = self.attn(tokens, tokens, tokens, need_weights=False)[0]
        out = out.transpose(1, 2).reshape(b, c, *size)
        if size != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return x + out


def fast_normalized_weights(raw: Tensor, eps: float = 1e-4) -> Tensor:
    """EfficientDet's fast normalised fusion weights: ReLU(w) / (ε + Σ ReLU(w))."""
    w = F.relu(raw)
    return w / (w.sum() + eps)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-1] < size[-1]:
        return F.interpolate(x, size=size, mode="nearest")
    return F.adaptive_max_pool2d(x, size)


def _sep_conv(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                         nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                         nn.SiLU())


class BiFPN(nn.Module):
    """One BiFPN layer over L >= 2 levels (highest resolution first).

    Args:
        in_channels: channels of each input level.
        channels: width of every output level.
        eps: ε of the fast normalised fusion.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 64, eps: float = 1e-4) -> None:
        super().__init__()
        n = len(in_channels)
        if n < 2:
            raise ValueError("BiFPN needs at least two levels")
        self.eps = eps
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))
            for c in in_channels)
        self.td_weights = nn.ParameterList(nn.Parameter(torch.ones(2)) for _ in range(n - 1))
        self.bu_weights = nn.ParameterList(
            nn.Parameter(torch.ones(3 if i < n - 1 else 2)) for i in range(1, n))
        self.td_conv = nn.ModuleList(_sep_conv(channels) for _ in range(n - 1))
        self.bu_conv = nn.ModuleList(_sep_conv(channels) for _ in range(n - 1))

    def _fuse(self, raw: Tensor, inputs: list[Tensor]) -> Tensor:
        w = fast_normalized_weights(raw, self.eps)
        return sum(wi * x for wi, x in zip(w, inputs))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Levels [(B, c_i, H_i, W_i)] -> [(B, channels, H_i, W_i)]."""
        p = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        n = len(p)
        td = list(p)
        for i in range(n - 2, -1, -1):  # top-down
            size = p[i].shape[-2:]
            td[i] = self.td_conv[i](self._fuse(self.td_weights[i], [p[i], _resize(td[i + 1], size)]))
        out = [td[0]]
        for i in range(1, n):  # bottom-up
            down = _resize(out[-1], p[i].shape[-2:])
            inputs = [p[i], td[i], down] if i < n - 1 else [p[i], down]
            out.append(self.bu_conv[i - 1](self._fuse(self.bu_weights[i - 1], inputs)))
        return out


class FeatureEnhancer(nn.Module):
    """EN (per-stage attention) + BiFPN + temporary classifier W′ on the last fused level.

    Args:
        stage_channels: channels of the backbone stages.
        num_classes: width of W′.
        layout: "mhsa" | "ca" per stage (default: `default_layout`).
        heads, max_side: SpatialMHSA settings.
        reduction: CoordAttention reduction.
        channels: BiFPN width.
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, *,
                 layout: Sequence[str] = (), heads: int = 4, max_side: int = 16,
                 reduction: int = 32, channels: int = 64) -> None:
        super().__init__()
        layout = tuple(layout) or default_layout(len(stage_channels))
        if len(layout) != len(stage_channels):
            raise ValueError(f"layout {layout} needs one entry per stage ({len(stage_channels)})")
        self.en = nn.ModuleList(
            SpatialMHSA(c, heads, max_side) if kind == "mhsa" else CoordAttention(c, reduction)
            for kind, c in zip(layout, stage_channels))
        self.bifpn = BiFPN(stage_channels, channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, stages: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Stage maps -> (fused maps T_i (B, channels, H_i, W_i), W′ logits (B, num_classes))."""
        enhanced = self.bifpn([block(f) for block, f in zip(self.en, stages, strict=True)])
        return enhanced, self.head(enhanced[-1].mean(dim=(2, 3)))
