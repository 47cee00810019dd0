"""Image transforms: eval, "none", "basic", DINO/iBOT multi-crop ("multicrop") and DeiT ("deit").

Inputs are PIL images (RGB); outputs are normalised float tensors (3, H, W). Train transforms
return a list of views. All randomness comes from torch's global generator, which the training
dataset reseeds per sample (``kdray.data.loader``), so augmentations are reproducible.

Multi-crop follows docs/methods/smkd.md §1.3 (DINO/iBOT/SMKD): colour jitter (0.4, 0.4, 0.2, 0.1) with
p=0.8, grayscale p=0.2, flips; global view 1 blur p=1.0, global view 2 blur p=0.1 + solarize
p=0.2 (further global views alternate), local views blur p=0.5. Blur sigma (0.1, 2.0) is given for
224-px crops; it is scaled by crop_size / 224, but never below a quarter of it (so a 32-px crop
still blurs with sigma up to 0.5 px).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from torchvision.transforms import v2

    from kdray.config import DataConfig
    from kdray.data.base import DatasetSpec


class _LazyV2:
    """`torchvision.transforms.v2`, imported on first use: importing torchvision pulls in its
    models and ops (and torch._dynamo), which processes that never build a transform (a Tune
    driver, a DDP trial's driver, `kdray report`) need not pay for."""

    def __getattr__(self, name: str):
        from torchvision.transforms import v2 as module

        return getattr(module, name)


if not TYPE_CHECKING:
    v2 = _LazyV2()


def _bicubic():
    return v2.InterpolationMode.BICUBIC


def _finish(spec: DatasetSpec) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std),
            v2.ToPureTensor()]


class EvalTransform:
    """Resize the short side, centre-crop, normalise: (3, H, W) or PIL in, (3, S, S) float out.

    ``batched``: it draws nothing and each image's output depends on that image only, so applying
    it to a stack (B, 3, H, W) of equally sized uint8 images equals applying it to each image
    (tests/test_eval_batching.py); evaluation loaders rely on this (``kdray.data.loader``)."""

    batched = True

    def __init__(self, short: int, size: int, spec: DatasetSpec) -> None:
        self.ops = v2.Compose([v2.ToImage(), v2.Resize(short, antialias=True),
                               v2.CenterCrop(size), *_finish(spec)])

    def __call__(self, img: Image.Image | Tensor) -> Tensor:
        return self.ops(img)


def eval_transform(cfg: DataConfig, spec: DatasetSpec, crop: float | None = None
                   ) -> EvalTransform:
    """Resize the short side to image_size / crop (default spec.eval_crop), centre-crop
    image_size, normalise."""
    size = cfg.image_size
    return EvalTransform(int(round(size / (spec.eval_crop if crop is None else crop))), size, spec)


def _blur(size: int, p: float) -> v2.Transform:
    scale = max(size / 224, 0.25)
    sigma = (0.1 * scale, 2.0 * scale)
    kernel = 2 * math.ceil(3 * sigma[1]) + 1
    return v2.RandomApply([v2.GaussianBlur(kernel, sigma)], p=p)


def _colour(spec: DatasetSpec, size: int, blur: float, solarize: float = 0.0) -> list:
    ops = [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
           v2.RandomGrayscale(p=0.2)]
    if blur > 0:
        ops.append(_blur(size, blur))
    if solarize > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize))  # uint8 images
    return ops


def _flip(spec: DatasetSpec) -> list:
    return [v2.RandomHorizontalFlip()] if spec.flip else []


def basic_transform(cfg: DataConfig, spec: DatasetSpec) -> Callable[[Image.Image], Tensor]:
    """Pad-and-crop + flip for 32-px data; random-resized crop (scale data.global_scale) + flip
    otherwise."""
    size = cfg.image_size
    if spec.native_size <= 32:
        crop = [v2.Resize(size, antialias=True), v2.RandomCrop(size, padding=size // 8)]
    else:
        crop = [v2.RandomResizedCrop(size, scale=cfg.global_scale, interpolation=_bicubic(),
                                     antialias=True)]
    return v2.Compose([v2.ToImage(), *crop, *_flip(spec), *_finish(spec)])


class MultiCrop:
    """`global_crops` views at image_size, then `local_crops` views at local_size."""

    def __init__(self, cfg: DataConfig, spec: DatasetSpec) -> None:
        def crop(size: int, scale: tuple[float, float], colour: list) -> v2.Compose:
            rrc = v2.RandomResizedCrop(size, scale=scale, interpolation=_bicubic(), antialias=True)
            return v2.Compose([v2.ToImage(), rrc, *_flip(spec), *colour, *_finish(spec)])

        g, loc = cfg.image_size, cfg.local_size
        first = crop(g, cfg.global_scale, _colour(spec, g, blur=1.0))
        second = crop(g, cfg.global_scale, _colour(spec, g, blur=0.1, solarize=0.2))
        self.globals = [first if i % 2 == 0 else second for i in range(cfg.global_crops)]
        self.local = crop(loc, cfg.local_scale, _colour(spec, loc, blur=0.5))
        self.local_crops = cfg.local_crops

    def __call__(self, img: Image.Image) -> list[Tensor]:
        views = [t(img) for t in self.globals]
        return views + [self.local(img) for _ in range(self.local_crops)]


class DeiTTransform:
    """DeiT's training transform from timm: random-resized crop (scale data.global_scale, bicubic),
    flip, RandAugment (data.rand_augment), normalise, RandomErasing (data.random_erasing, pixel
    mode). timm draws from Python's and NumPy's global generators: they are seeded here from
    torch's (which the training dataset seeds per sample) and restored afterwards."""

    def __init__(self, cfg: DataConfig, spec: DatasetSpec) -> None:
        from timm.data import create_transform

        self.transform = create_transform(
            cfg.image_size, is_training=True, scale=cfg.global_scale,
            hflip=0.5 if spec.flip else 0.0, color_jitter=0.3,
            auto_augment=cfg.rand_augment or None, interpolation="bicubic",
            re_prob=cfg.random_erasing, re_mode="pixel", re_count=1, mean=spec.mean, std=spec.std)

    def __call__(self, img: Image.Image) -> list[Tensor]:
        seed = int(torch.randint(0, 2**31 - 1, ()))
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return [self.transform(img)]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def train_transform(cfg: DataConfig, spec: DatasetSpec) -> Callable[[Image.Image], list[Tensor]]:
    """The data.augment pipeline; always returns a list of views (one unless multicrop)."""
    if cfg.augment == "multicrop":
        return MultiCrop(cfg, spec)
    if cfg.augment == "deit":
        return DeiTTransform(cfg, spec)
    if cfg.augment == "none":  # resize + centre-crop to image_size, normalise
        return _Listed(eval_transform(cfg, spec, crop=1.0))
    return _Listed(basic_transform(cfg, spec))


class _Listed:
    """Wraps a single-view transform so it returns [view] (picklable, unlike a lambda)."""

    def __init__(self, transform: Callable[[Image.Image], Tensor]) -> None:
        self.transform = transform

    def __call__(self, img: Image.Image) -> list[Tensor]:
        return [self.transform(img)]
