"""MKD adaptive decoder (train-only; docs/methods/mkd.md §2.1): student FPN levels -> teacher-like features.

For each FPN level i (stride s_i, grid stride 32, p = 32 / s_i):

1. phi_i: 1x1 conv, student channels C_S -> teacher channels C_T.
2. SAM_i (spatial alignment) to the (gh, gw) = (ceil(H/32), ceil(W/32)) grid: a p x p conv with
   stride p for finer levels (P3: p = 4), identity at stride 32 (a 1x1 conv when the decoder
   width differs from C_T), nearest upsampling by 1/p for coarser levels (P6, P7), cropped.
3. One learnable mask token per level (not shared) replaces the masked grid positions.
4. `depth` pre-norm Transformer layers (self-attention + FFN, i.e. encoder-style layers without
   cross-attention; the paper's "simple decoder") on the gh*gw tokens plus a positional embedding.
5. SRM_i (spatial recovery): a linear layer to p^2 * C_T channels and a pixel shuffle back to the
   level's (H_i, W_i) for finer levels; a linear to C_T and average pooling by 1/p for coarser ones.

[inferred] (config fields with these defaults; nothing in docs/methods/mkd.md §2 fixes them): width `dim` = 256,
`depth` = 2, `heads` = 8, `mlp_ratio` = 4, `pos_embed` = "sincos" (fixed 2-D sin-cos; "learned"
is a table on `learned_grid` bilinearly resized to the actual grid; "none"), `shared_layers` = True
(one Transformer for every level, run on the levels as separate sequences: SAM exists to bring
every level to one grid), a final LayerNorm before the SRM, mask-token init N(0, 0.02^2) (MAE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POS_EMBEDS = ("sincos", "learned", "none")


def sincos_2d(gh: int, gw: int, dim: int, *, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sin-cos positional embedding (Vaswani et al. per axis, as in MAE).

    The first dim/2 channels encode the row, the last dim/2 the column; each half is
    [sin(pos * w_k), cos(pos * w_k)] with w_k = 10000^(-k / (dim/4)), k = 0 .. dim/4 - 1.

    Returns:
        (gh * gw, dim), row-major over the grid.
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2-D embedding needs dim divisible by 4, got {dim}")
    omega = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))

    def axis(n: int) -> Tensor:  # (n, dim/2)
        ang = torch.arange(n, dtype=torch.float32, device=device)[:, None] * omega[None]
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    rows = axis(gh)[:, None].expand(gh, gw, dim // 2)
    cols = axis(gw)[None].expand(gh, gw, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(gh * gw, dim)


class LevelAdapter(nn.Module):
    """phi + SAM + mask token + SRM of one FPN level whose stride is `stride`."""

    def __init__(self, *, stride: int, in_channels: int, out_channels: int, dim: int,
                 grid_stride: int = 32) -> None:
        super().__init__()
        if max(stride, grid_stride) % min(stride, grid_stride):
            raise ValueError(f"level stride {stride} and grid stride {grid_stride} must divide")
        self.up = grid_stride // stride if stride < grid_stride else 1    # finer: p
        self.down = stride // grid_stride if stride > grid_stride else 1  # coarser: 1 / p
        self.out_channels = out_channels
        self.phi = nn.Conv2d(in_channels, out_channels, 1)
        if self.up > 1:
            self.sam = nn.Conv2d(out_channels, dim, self.up, stride=self.up)
        else:
            self.sam = nn.Identity() if dim == out_channels else nn.Conv2d(out_channels, dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.srm = nn.Linear(dim, self.up * self.up * out_channels)

    def align(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, C_S, H_i, W_i) -> (B, dim, gh, gw) on the stride-32 grid (phi + SAM)."""
        x = self.phi(x)
        if self.up > 1:  # pad so that a partial last cell still gets one output position
            ph, pw = -x.shape[-2] % self.up, -x.shape[-1] % self.up
            x = F.pad(x, (0, pw, 0, ph))
        elif self.down > 1:
            x = x.repeat_interleave(self.down, dim=-2).repeat_interleave(self.down, dim=-1)
        x = self.sam(x)[..., : grid[0], : grid[1]]
        if tuple(x.shape[-2:]) != tuple(grid):
            raise ValueError(f"level with up={self.up}, down={self.down} aligns to "
                             f"{tuple(x.shape[-2:])}, not the mask grid {tuple(grid)}")
        return x

    def insert_mask_token(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, dim, gh, gw) grid, (B, 1, gh, gw) bool mask -> (B, gh*gw, dim) tokens."""
        tokens = x.flatten(2).transpose(1, 2)
        m = mask.flatten(1)[..., None]  # (B, N, 1)
        return torch.where(m, self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)

    def recover(self, tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """(B, gh*gw, dim) -> (B, C_T, H_i, W_i) (SRM)."""
        b = tokens.shape[0]
        x = self.srm(tokens).transpose(1, 2).reshape(b, -1, *grid)
        if self.up > 1:
            x = F.pixel_shuffle(x, self.up)
        elif self.down > 1:
            x = F.avg_pool2d(x, self.down, ceil_mode=True)
        x = x[..., : size[0], : size[1]]
        if tuple(x.shape[-2:]) != tuple(size):
            raise ValueError(f"SRM gives {tuple(x.shape[-2:])}, level has {tuple(size)}")
        return x


def _layer(dim: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0,
                                      activation="gelu", batch_first=True, norm_first=True)


class AdaptiveDecoder(nn.Module):
    """MKD adaptive decoder over all FPN levels (see module docstring).

    Args:
        strides: stride of each decoded FPN level, e.g. (8, 16, 32, 64, 128) for RetinaNet P3-P7.
        in_channels: student FPN channels C_S.
        out_channels: teacher FPN channels C_T (256 for mmdet/torchvision FPNs).
        dim: decoder width [inferred, 256].
        depth: Transformer layers [inferred, 2; docs/methods/mkd.md §2 suggests searching {1, 2, 4}].
        heads: attention heads [inferred, 8].
        mlp_ratio: FFN hidden width / dim [inferred, 4].
        pos_embed: "sincos" | "learned" | "none" [inferred, "sincos"].
        shared_layers: one Transformer for all levels (True) or one per level [inferred, True].
        grid_stride: stride of the mask grid (MKD: 32).
        learned_grid: (gh, gw) of the learned position table, resized to the actual grid.
    """

    def __init__(self, *, strides: tuple[int, ...] = (8, 16, 32, 64, 128), in_channels: int,
                 out_channels: int = 256, dim: int = 256, depth: int = 2, heads: int = 8,
                 mlp_ratio: float = 4.0, pos_embed: str = "sincos", shared_layers: bool = True,
                 grid_stride: int = 32, learned_grid: tuple[int, int] = (25, 42)) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if depth < 1 or dim % heads:
            raise ValueError(f"need depth >= 1 and dim % heads == 0 (depth={depth}, dim={dim}, "
                             f"heads={heads})")
        self.strides, self.pos_embed, self.dim = tuple(strides), pos_embed, dim
        self.levels = nn.ModuleList(
            LevelAdapter(stride=s, in_channels=in_channels, out_channels=out_channels, dim=dim,
                         grid_stride=grid_stride) for s in strides)
        n_stacks = 1 if shared_layers else len(strides)
        self.blocks = nn.ModuleList(
            nn.ModuleList(_layer(dim, heads, mlp_ratio) for _ in range(depth))
            for _ in range(n_stacks))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_stacks))
        if pos_embed == "learned":
            self.pos_table = nn.Parameter(torch.zeros(1, dim, *learned_grid))
            nn.init.normal_(self.pos_table, std=0.02)

    def position(self, grid: tuple[int, int], device: torch.device) -> Tensor | None:
        """(gh*gw, dim) positional embedding of the grid, or None."""
        if self.pos_embed == "sincos":
            return sincos_2d(*grid, self.dim, device=device)
        if self.pos_embed == "learned":
            table = F.interpolate(self.pos_table, size=grid, mode="bilinear", align_corners=False)
            return table[0].flatten(1).t()
        return None

    def _transform(self, tokens: Tensor, stack: int) -> Tensor:
        for layer in self.blocks[stack]:
            tokens = layer(tokens)
        return self.norms[stack](tokens)

    def forward(self, feats: list[Tensor], mask: Tensor) -> list[Tensor]:
        """Decode every level.

        Args:
            feats: student FPN levels, level i of shape (B, C_S, H_i, W_i), in `strides` order.
            mask: (B, 1, gh, gw) bool, True = masked (the grid the student input was masked on).

        Returns:
            list of (B, C_T, H_i, W_i): F_hat_S,i, the features regressed onto the teacher's.
        """
        if len(feats) != len(self.levels):
            raise ValueError(f"decoder built for {len(self.levels)} levels, got {len(feats)}")
        grid = (mask.shape[-2], mask.shape[-1])
        pos = self.position(grid, mask.device)
        tokens = [lvl.insert_mask_token(lvl.align(f, grid), mask)
                  for lvl, f in zip(self.levels, feats)]
        if pos is not None:
            tokens = [t + pos.to(t.dtype) for t in tokens]
        if len(self.blocks) == 1:  # shared: one batched call, levels as separate sequences
            b = mask.shape[0]
            tokens = list(self._transform(torch.cat(tokens), 0).split(b))
        else:
            tokens = [self._transform(t, i) for i, t in enumerate(tokens)]
        return [lvl.recover(t, grid, (f.shape[-2], f.shape[-1]))
                for lvl, t, f in zip(self.levels, tokens, feats)]


def grid_size(h: int, w: int, grid_stride: int = 32) -> tuple[int, int]:
    """(ceil(h / grid_stride), ceil(w / grid_stride)): the mask grid of an h x w image."""
    return math.ceil(h / grid_stride), math.ceil(w / grid_stride)
