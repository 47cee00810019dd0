"""MKD input masking: a random mask on the stride-32 grid and masked convolution by hooks.

"Masked Autoencoders Are Stronger Knowledge Distillers" (Lao et al., ICCV 2023; docs/methods/mkd.md §2.1):
the student sees an image whose H/32 x W/32 grid cells are randomly masked; the mask is upsampled
(nearest) to every backbone resolution and multiplies the input of every convolution, so masked
regions stay empty instead of being filled in from visible neighbours.

Conventions (as ``kdray.modules.masking``): a mask is a bool tensor, True = masked, of shape
(B, 1, gh, gw) with gh = ceil(H / 32), gw = ceil(W / 32). Convolutions multiply by the *keep*
mask (1 = visible). The hooks live outside torchvision (forward pre-hooks), so any backbone made
of ``nn.Conv2d`` can be masked without editing its code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def random_mask(b: int, h: int, w: int, ratio: float, *, stride: int = 32,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """Random grid mask with exactly ``round(ratio * gh * gw)`` masked cells per image.

    The cells are a uniform random subset, drawn independently per image [inferred: the paper
    says "random mask with a given ratio"; an exact count (not Bernoulli cells) keeps the ratio
    fixed across images, as MAE does].

    Args:
        b: batch size.
        h, w: image height and width in pixels (need not be multiples of `stride`).
        ratio: fraction of grid cells to mask, in [0, 1].
        stride: grid cell size in pixels (MKD: 32, the stride of the last backbone stage).
        generator: CPU generator the cells are drawn from (each image independently).
        device: device of the returned mask.

    Returns:
        (B, 1, ceil(h / stride), ceil(w / stride)) bool mask, True = masked.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    gh, gw = math.ceil(h / stride), math.ceil(w / stride)
    n = gh * gw
    k = int(round(ratio * n))
    # argsort of iid uniforms = one uniform random permutation per image
    order = torch.rand(b, n, generator=generator).argsort(dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(b, 1, gh, gw).to(device)


def _factor(size: int, grid: int) -> int:
    """Power-of-two upsampling factor from a grid of `grid` cells to a map of `size` positions."""
    return 1 if size <= grid else 2 ** math.ceil(math.log2(size / grid))


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest upsampling of a grid mask to a finer feature map of spatial `size`.

    A conv/pool with stride 2 and "same" padding maps n positions to ceil(n / 2), so a map at
    stride r has ceil(H / r) rows and grid cell j covers its rows [j * 32/r, (j + 1) * 32/r).
    The mask is therefore repeated by the integer factor 32/r and cropped, not interpolated to
    `size` (``F.interpolate(mode="nearest")`` with a non-integer scale would shift cell borders
    when H is not a multiple of 32). The factor is the smallest power of two that covers `size`.

    Args:
        mask: (B, 1, gh, gw) mask (any dtype).
        size: (h, w) target size, each at least the grid size.

    Returns:
        (B, 1, h, w) mask of the same dtype.
    """
    gh, gw = mask.shape[-2:]
    fh, fw = _factor(size[0], gh), _factor(size[1], gw)
    if size[0] < gh or size[1] < gw:
        raise ValueError(f"{tuple(size)} is coarser than the {gh}x{gw} grid; use level_mask")
    if gh * fh < size[0] or gw * fw < size[1]:
        raise ValueError(f"cannot upsample a {gh}x{gw} grid mask to {tuple(size)}")
    up = mask.repeat_interleave(fh, dim=-2).repeat_interleave(fw, dim=-1)
    return up[..., : size[0], : size[1]]


def stage_masks(mask: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
    """The grid mask upsampled to each backbone stage's spatial size (e.g. strides 4, 8, 16, 32)."""
    return [resize_mask(mask, s) for s in sizes]


class MaskedConvHooks:
    """Masked convolution for every ``nn.Conv2d`` inside `module`, via forward pre-hooks.

    While a mask is set, each conv input (B, C, h, w) is multiplied by the keep mask resized to
    (h, w) (see `resize_mask`); with no mask set the hooks do nothing. Use as::

        hooks = MaskedConvHooks(student.backbone)
        with hooks.masked(mask):      # mask (B, 1, gh, gw) bool, True = masked
            feats = student(images)
        hooks.remove()                # back to the plain module

    Plain BatchNorm in train mode still averages over the (empty) masked positions; convert the
    module with `convert_visible_bn` *before* building the hooks to compute BN statistics over
    visible positions only (docs/methods/mkd.md §2.6 item 1 says "ideally"; [inferred] option for the
    method config, suggested default off = the paper's plain masked convolution).
    """

    def __init__(self, module: nn.Module) -> None:
        self.convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not self.convs:
            raise ValueError("MaskedConvHooks: the module has no nn.Conv2d")
        self._keep: Tensor | None = None
        self._cache: dict[tuple[int, int], Tensor] = {}
        self._handles = [c.register_forward_pre_hook(self._hook) for c in self.convs]
        self.norms = [m for m in module.modules() if isinstance(m, VisibleBatchNorm2d)]
        for bn in self.norms:
            bn.mask_source = self

    def set_mask(self, mask: Tensor | None) -> None:
        """Mask (B, 1, gh, gw) bool (True = masked) for the next forwards; None disables."""
        self._cache = {}
        self._keep = None if mask is None else (~mask.bool()).float()

    @contextmanager
    def masked(self, mask: Tensor | None) -> Iterator[MaskedConvHooks]:
        """Set `mask` for the duration of the block; it is cleared afterwards (even on error)."""
        self.set_mask(mask)
        try:
            yield self
        finally:
            self.set_mask(None)

    def remove(self) -> None:
        """Detach every hook from the module."""
        for h in self._handles:
            h.remove()
        for bn in self.norms:
            bn.mask_source = None
        self._handles, self.norms = [], []
        self.set_mask(None)

    def keep_like(self, x: Tensor) -> Tensor | None:
        """(B, 1, h, w) keep mask (1 = visible) at the resolution of `x`, or None if unset."""
        return None if self._keep is None else self._keep_at(x)

    def _keep_at(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        if size not in self._cache:  # one resize per resolution and forward, not per conv
            self._cache[size] = resize_mask(self._keep, size).to(device=x.device)
        return self._cache[size].to(dtype=x.dtype)

    def _hook(self, conv: nn.Module, args: tuple) -> tuple | None:
        if self._keep is None:
            return None
        x = args[0]
        if self._keep.shape[0] != x.shape[0]:
            raise ValueError(f"mask batch {self._keep.shape[0]} != conv input batch {x.shape[0]}")
        return (x * self._keep_at(x),) + tuple(args[1:])


def keep_fraction(mask: Tensor) -> Tensor:
    """(B,) fraction of visible cells of a (B, 1, gh, gw) bool mask (True = masked)."""
    return (~mask).flatten(1).float().mean(dim=1)


def pool_mask(mask: Tensor, factor: int) -> Tensor:
    """Fraction of masked grid cells under each position of a map `factor` times coarser.

    Used for P6/P7 (strides 64/128) where one position covers several stride-32 cells; windows
    at the border cover only the cells that exist (ceil-mode pooling, as the stride-2 convs).

    Args:
        mask: (B, 1, gh, gw) bool mask, True = masked.
        factor: integer coarsening factor (2 for P6, 4 for P7).

    Returns:
        (B, 1, ceil(gh / factor), ceil(gw / factor)) float in [0, 1].
    """
    m = mask.float()
    gh, gw = m.shape[-2:]
    ph, pw = -gh % factor, -gw % factor
    total = F.avg_pool2d(F.pad(m, (0, pw, 0, ph)), factor) * factor * factor
    count = F.avg_pool2d(F.pad(torch.ones_like(m), (0, pw, 0, ph)), factor) * factor * factor
    return total / count


def level_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Masked weight of each position of a feature map of spatial `size` (any FPN level).

    Finer or equal maps (P3-P5) get the upsampled 0/1 mask (`resize_mask`); coarser maps (P6, P7)
    get the fraction of masked stride-32 cells under each position (`pool_mask`) [inferred: the
    paper defines no masked-only loss, so how coarse levels count is our choice].

    Args:
        mask: (B, 1, gh, gw) bool mask, True = masked.
        size: (h, w) of the level.

    Returns:
        (B, 1, h, w) float weights in [0, 1].
    """
    gh, gw = mask.shape[-2:]
    if size[0] >= gh and size[1] >= gw:
        return resize_mask(mask, size).float()
    factor = max(_factor(gh, size[0]), _factor(gw, size[1]))  # a 1-cell axis cannot tell
    out = pool_mask(mask, factor)
    if tuple(out.shape[-2:]) != tuple(size):
        raise ValueError(f"a {gh}x{gw} grid mask does not pool to {tuple(size)}")
    return out


class VisibleBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose train-mode batch statistics use only the visible positions.

    The keep mask comes from the `MaskedConvHooks` that found this module (`mask_source`); with no
    mask set, in eval mode, or without a source it is exactly ``nn.BatchNorm2d``. Running
    statistics are updated with the visible-position mean and unbiased variance. Per-rank
    statistics, as plain BatchNorm under DDP (no SyncBatchNorm variant).
    """

    mask_source: MaskedConvHooks | None = None

    def forward(self, x: Tensor) -> Tensor:
        keep = None if self.mask_source is None or not self.training else (
            self.mask_source.keep_like(x))
        if keep is None:
            return super().forward(x)
        w = keep.expand(x.shape[0], 1, *x.shape[-2:])
        n = w.sum()
        mean = (x * w).sum(dim=(0, 2, 3)) / n.clamp_min(1)
        var = ((x - mean[:, None, None]).pow(2) * w).sum(dim=(0, 2, 3)) / n.clamp_min(1)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        y = (x - mean[:, None, None]) * torch.rsqrt(var + self.eps)[:, None, None]
        return y * self.weight[:, None, None] + self.bias[:, None, None] if self.affine else y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var: Tensor) -> None:
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(var.to(self.running_var.dtype), m)


def convert_visible_bn(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.BatchNorm2d`` inside `module` by `VisibleBatchNorm2d` (same state,
    same train/eval mode), in place; returns `module` (a BatchNorm2d itself is returned converted).
    Frozen BN (torchvision detection backbones) and SyncBatchNorm are left alone."""
    if type(module) is nn.BatchNorm2d:
        new = VisibleBatchNorm2d(module.num_features, module.eps, module.momentum,
                                 module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.to(next(iter(module.state_dict().values())).device).train(module.training)
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_visible_bn(child))
    return module
