"""SSKD pieces (docs/methods/sskd.md §3): the transformed views, the rotated-vs-normal similarity matrix,
the teacher's contrastive objective, per-sample ranks, and selective transfer (the row-averaged KL is
`kdray.modules.losses.kl_div(..., reduction="masked")`).

Row layout used throughout: transformed samples are view-major, row r = k * B + b is the k-th
transformed copy of image b, so its positive (its own source) is normal sample b = r % B.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

TRANSFORMS = ("rotation", "paper")
_LUMA = (0.299, 0.587, 0.114)


def transformed_views(x: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """The transformed copies x~ of a batch of normal images.

    Args:
        x: (B, C, H, W) normal views (already cropped/flipped/normalised by the data pipeline).
        kind: "rotation" (official code: 90, 180, 270 degrees; needs H == W) or "paper" (one copy
            per family of the paper: colour dropping, a random rotation, crop + resize, colour
            distortion; each drawn per sample from `generator`).
        generator: CPU generator for the "paper" draws.
    Returns:
        (K * B, C, H, W) view-major: K = 3 for "rotation", 4 for "paper".
    """
    if kind == "rotation":
        return torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in (1, 2, 3)])
    if kind != "paper":
        raise ValueError(f"unknown SSKD transform set {kind!r}; choose from {TRANSFORMS}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return torch.cat([_drop_colour(x), _random_rotation(x, g), _crop_resize(x, g),
                      _colour_distort(x, g)])


def _drop_colour(x: Tensor) -> Tensor:
    # luma of the normalised channels, repeated: the colour information is gone
    w = x.new_tensor(_LUMA)[None, :, None, None]
    return (x * w).sum(1, keepdim=True).expand_as(x).contiguous()


def _random_rotation(x: Tensor, g: torch.Generator) -> Tensor:
    k = torch.randint(1, 4, (x.shape[0],), generator=g).tolist()
    return torch.stack([torch.rot90(img, int(q), dims=(1, 2)) for img, q in zip(x, k)])


def _crop_resize(x: Tensor, g: torch.Generator, scale: tuple[float, float] = (0.2, 1.0)) -> Tensor:
    # a random box of area share U(scale), aspect log-uniform in [3/4, 4/3], resized to H x W
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=g)
    log_r = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    sw = (area * log_r.exp()).sqrt().clamp(max=1.0)
    sh = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False)


def _colour_distort(x: Tensor, g: torch.Generator, strength: float = 0.5) -> Tensor:
    # per-sample brightness, contrast and saturation factors in [1 - s, 1 + s]
    b = x.shape[0]
    f = (1 + (torch.rand(3, b, 1, 1, 1, generator=g) * 2 - 1) * strength).to(x.device, x.dtype)
    gray = _drop_colour(x)
    y = gray + f[2] * (x - gray)                                # saturation
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + f[1] * (y - mean)                                # contrast
    return y + (f[0] - 1)                                       # brightness (normalised units)


def similarity(z_tf: Tensor, z_nor: Tensor) -> Tensor:
    """Cosine similarity of every transformed sample with every normal sample.

    Args:
        z_tf: (K * B, D) SS-module outputs of the transformed samples.
        z_nor: (B, D) SS-module outputs of the normal samples.
    Returns:
        (K * B, B) matrix A with A[r, j] = cos(z_tf[r], z_nor[j]).
    """
    return F.normalize(z_tf.float(), dim=1) @ F.normalize(z_nor.float(), dim=1).T


def source_index(rows: int, batch: int, device: torch.device | None = None) -> Tensor:
    """(rows,) the normal sample each view-major transformed row comes from (r % B)."""
    return torch.arange(rows, device=device) % batch


def contrastive_loss(sim: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Teacher SS-module objective: cross-entropy of each row of sim / tau against its source.

    Args:
        sim: (K * B, B) similarities (`similarity`); tau: temperature (official code: 1).
    Returns:
        (loss, accuracy): mean CE and the share of rows whose largest entry is their source.
    """
    target = source_index(sim.shape[0], sim.shape[1], sim.device)
    loss = F.cross_entropy(sim / tau, target)
    return loss, (sim.argmax(dim=1) == target).float().mean()


def target_rank(scores: Tensor, target: Tensor) -> Tensor:
    """Rank of the target entry in each row, 0 = the largest.

    Args:
        scores: (N, M) logits or similarities; target: (N,) column of each row's positive.
    Returns:
        (N,) int64 number of entries strictly larger than the target's (ties count in its favour;
        the official `argsort` places tied entries arbitrarily).
    """
    t = scores.gather(1, target[:, None])
    return (scores > t).sum(dim=1)


def exact_ratio(ratio: float) -> tuple[int, int]:
    """`ratio` as the decimal fraction it was written as (its shortest repr, e.g. 0.53 -> 53/100,
    denominators up to 10**6), so floor(ratio * n) is integer arithmetic: a float product is one
    short for some ratios (0.57 * 100 = 56.99999999999999 in float64; 0.53 * 100 in float32)."""
    f = Fraction(repr(float(ratio))).limit_denominator(10**6)
    return f.numerator, f.denominator


def select_rows(rank: Tensor, ratio: float) -> Tensor:
    """Selective transfer: all rows with rank 0 plus the floor(ratio * #wrong) wrong rows of
    smallest rank; ties between wrong rows are broken by row order (stable sort).

    Args:
        rank: (N,) per-row ranks (`target_rank`); ratio: share of wrong rows kept, in [0, 1].
    Returns:
        (N,) bool mask of the kept rows.
    """
    # all on the device (no host sync per step): a row is kept when its place in the stable
    # order by rank is below the number of rows to keep
    wrong = (rank > 0).sum()
    num, den = exact_ratio(ratio)
    keep = (rank.numel() - wrong) + torch.div(wrong * num, den, rounding_mode="floor")
    order = torch.sort(rank, stable=True).indices
    place = torch.empty_like(order)
    place[order] = torch.arange(rank.numel(), device=rank.device)
    return place < keep
