"""Block-wise patch masks for masked image modelling (BEiT, arXiv:2106.08254, Sec. 2.5; iBOT).

A mask is a bool tensor over the patch grid, True = masked. Masks are pure functions of the grid
shape, the target ratio and an explicit `torch.Generator`; they are drawn in the data collate
(``kdray.data.loader``) and travel in ``Batch.masks``.

Deviation from BEiT: BEiT's loop can stop a few patches short of the target when no further
block fits. Here the shortfall is topped up with single patches next to the existing blocks, so
the mask hits ``round(ratio * h * w)`` exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: consecutive failed block placements after which the block phase gives up.
_MAX_FAILURES = 10


def _uniforms(n: int, generator: torch.Generator) -> list[float]:
    return torch.rand(n, generator=generator).tolist()


def _place_block(mask: Tensor, low: float, high: int, log_aspect: tuple[float, float],
                 generator: torch.Generator) -> int:
    """Mask one random block adding between 1 and `high` new patches; returns how many it added."""
    h, w = mask.shape
    for _ in range(_MAX_FAILURES):
        u_area, u_aspect, u_top, u_left = _uniforms(4, generator)
        area = low + u_area * (high - low)
        aspect = math.exp(log_aspect[0] + u_aspect * (log_aspect[1] - log_aspect[0]))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (1 <= bh <= h and 1 <= bw <= w):
            continue
        top = int(u_top * (h - bh + 1))
        left = int(u_left * (w - bw + 1))
        region = mask[top:top + bh, left:left + bw]
        new = bh * bw - int(region.sum())
        if 0 < new <= high:
            region.fill_(True)
            return new
    return 0


def _top_up(mask: Tensor, missing: int, generator: torch.Generator) -> None:
    """Mask `missing` more patches, preferring unmasked 4-neighbours of masked ones (stays blocky)."""
    while missing > 0:
        grown = mask.clone()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        candidates = torch.nonzero((grown & ~mask).flatten()).flatten()
        if candidates.numel() == 0:  # empty mask (or nothing adjacent): any free patch
            candidates = torch.nonzero(~mask.flatten()).flatten()
        pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:missing]]
        mask.view(-1)[pick] = True
        missing -= pick.numel()


def block_mask(h: int, w: int, ratio: float, generator: torch.Generator, *, min_patches: int = 4,
               aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> Tensor:
    """BEiT-style block-wise mask over an (h, w) patch grid.

    Blocks of random area (at least `min_patches`, shrinking when fewer patches are left) and
    log-uniform aspect ratio are placed until ``round(ratio * h * w)`` patches are masked.

    Args:
        h: grid height in patches.
        w: grid width in patches.
        ratio: share of patches to mask, in [0, 1].
        generator: source of all randomness (same seed -> same mask).
        min_patches: smallest block area while enough patches remain.
        aspect: (low, high) range of block height / width, sampled log-uniformly.

    Returns:
        (h, w) bool tensor, True = masked, with exactly ``int(ratio * h * w + 0.5)`` True entries.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    mask = torch.zeros(h, w, dtype=torch.bool)
    target = min(h * w, int(ratio * h * w + 0.5))
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count, failures = 0, 0
    while count < target and failures < _MAX_FAILURES:
        left = target - count
        added = _place_block(mask, min(min_patches, left), left, log_aspect, generator)
        count += added
        failures = failures + 1 if added == 0 else 0
    _top_up(mask, target - count, generator)
    return mask


def image_mask(h: int, w: int, *, prob: float, ratio_range: tuple[float, float],
               generator: torch.Generator, min_patches: int = 4) -> Tensor:
    """One image's mask: with probability `prob` a block mask of ratio ~ U(ratio_range), else none.

    Returns:
        (h, w) bool tensor; all False for an unmasked image.
    """
    coin, u = _uniforms(2, generator)
    if coin >= prob:
        return torch.zeros(h, w, dtype=torch.bool)
    low, high = ratio_range
    return block_mask(h, w, low + u * (high - low), generator, min_patches=min_patches)


def batch_masks(batch: int, h: int, w: int, *, prob: float, ratio_range: tuple[float, float],
                generator: torch.Generator, min_patches: int = 4) -> Tensor:
    """Masks for a batch (the iBOT recipe: each image masked with prob `prob`, ratio ~ U(range)).

    Returns:
        (batch, h, w) bool tensor.
    """
    return torch.stack([image_mask(h, w, prob=prob, ratio_range=ratio_range, generator=generator,
                                   min_patches=min_patches) for _ in range(batch)])


def default_min_patches(h: int, w: int) -> int:
    """Smallest block area, iBOT's rule scaled to the grid: (side // 3)^2 (16 on a 14x14 grid)."""
    return max(1, (min(h, w) // 3) ** 2)
