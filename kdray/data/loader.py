"""Training loader (sharded samplers, per-sample seeded augmentation, masks in collate) and the
evaluation dataset.

Reproducibility: a sample's augmentation and masks are drawn from generators seeded by the
sample seed the sampler attaches (a hash of (cfg.seed, epoch, index)), inside ``fork_rng`` so the
trainer's global RNG is untouched. A loader therefore yields identical batches for a given epoch
whatever the number of DataLoader workers, and after a restart: `set_epoch` is all a resumed run
needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from kdray.config import ConfigError
from kdray.data.base import ImageDataset, mix_seed
from kdray.data.registry import build_dataset, get_spec
from kdray.data.samplers import (
    ClassAwareBatchSampler,
    RepeatedAugBatchSampler,
    ShardedBatchSampler,
)
from kdray.data.transforms import eval_transform, train_transform
from kdray.modules.masking import default_min_patches, image_mask
from kdray.modules.mixing import draw_mix
from kdray.types import Batch

if TYPE_CHECKING:
    from kdray.config import DataConfig, ExperimentConfig

_MASK_SALT = 0x6D61736B  # separates mask draws from augmentation draws of the same sample
_MIX_SALT = 0x6D6978  # mixup/CutMix draws of a batch (seeded by its first sample)

Sample = tuple[list[Tensor], int, int, int]  # views, label, index, sample seed


class TrainView(Dataset):
    """Wraps a split; keys are (index, sample seed) pairs from the kdray batch samplers."""

    def __init__(self, base: ImageDataset, transform: Callable[[Any], list[Tensor]]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, seed = key
        img = self.base.load(index)
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # per-image ops are tiny: intra-op threads only add sync cost (10x slower on a busy
            # machine); DataLoader workers already run single-threaded.
            torch.set_num_threads(1)
            try:
                views = self.transform(img)
            finally:
                torch.set_num_threads(threads)
        return views, self.base.targets[index], index, seed


class TrainCollate:
    """Stacks views into a `Batch`; draws one (B, h, w) mask per global crop when mask_prob > 0
    and the batch's mixup/CutMix parameters (`Batch.mix`, applied by the method) when enabled."""

    def __init__(self, cfg: DataConfig) -> None:
        self.n_global = cfg.global_crops if cfg.augment == "multicrop" else 1
        self.grid = cfg.image_size // cfg.patch_size
        self.prob, self.ratio = cfg.mask_prob, cfg.mask_ratio
        self.min_patches = default_min_patches(self.grid, self.grid)
        self.mix = None
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            self.mix = {"mixup_alpha": cfg.mixup_alpha, "cutmix_alpha": cfg.cutmix_alpha,
                        "prob": cfg.mix_prob, "switch_prob": cfg.mix_switch_prob}

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        views = [torch.stack([s[0][v] for s in samples]) for v in range(len(samples[0][0]))]
        masks = None
        if self.prob > 0:
            masks = [self._masks(samples, v) for v in range(self.n_global)]
        mix = None
        if self.mix is not None:
            rng = np.random.RandomState(mix_seed(samples[0][3], _MIX_SALT) % 2**32)
            mix = draw_mix(rng, *views[0].shape[-2:], **self.mix)
        return Batch(views=views, labels=torch.tensor([s[1] for s in samples], dtype=torch.long),
                     masks=masks, mix=mix,
                     index=torch.tensor([s[2] for s in samples], dtype=torch.long))

    def _masks(self, samples: Sequence[Sample], view: int) -> Tensor:
        g = torch.Generator()
        out = []
        for s in samples:
            g.manual_seed(mix_seed(s[3], view, _MASK_SALT))
            out.append(image_mask(self.grid, self.grid, prob=self.prob, ratio_range=self.ratio,
                                  generator=g, min_patches=self.min_patches))
        return torch.stack(out)


def build_train_loader(cfg: ExperimentConfig, *, rank: int, world: int) -> DataLoader:
    """DataLoader of `Batch`es for DDP rank `rank` of `world` (per-rank batch = batch_size / world).

    Views are [global crops..., local crops...] for multicrop, else [one view]; masks (one
    (B, h, w) bool tensor per global crop, h = w = image_size // patch_size) only when
    data.mask_prob > 0. Call `set_epoch(loader, epoch)` before iterating each epoch.
    """
    d = cfg.data
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size={d.batch_size} must be divisible by {world} workers")
    spec = get_spec(d.dataset)
    if hasattr(spec, "train_loader"):  # detection datasets bring their own (kdray.data.coco)
        return spec.train_loader(cfg, rank=rank, world=world)
    base = build_dataset(d, d.train_split)
    if d.repeated_aug > 1:
        sampler = RepeatedAugBatchSampler(len(base), repeats=d.repeated_aug,
                                          batch_size=d.batch_size, rank=rank, world=world,
                                          seed=cfg.seed)
    elif d.class_aware:
        sampler = ClassAwareBatchSampler(base.targets, m=d.class_aware, batch_size=d.batch_size,
                                         rank=rank, world=world, seed=cfg.seed)
    else:
        sampler = ShardedBatchSampler(len(base), batch_size=d.batch_size, rank=rank, world=world,
                                      seed=cfg.seed)
    if len(sampler) == 0:
        raise ConfigError(f"data.batch_size={d.batch_size}: split {d.train_split!r} of "
                          f"{d.dataset} ({len(base)} images) yields no complete batch")
    generator = torch.Generator()
    generator.manual_seed(mix_seed(cfg.seed, 0, rank))
    return DataLoader(TrainView(base, train_transform(d, spec)), batch_sampler=sampler,
                      collate_fn=TrainCollate(d), num_workers=d.loader_workers,
                      generator=generator, persistent_workers=False)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select the epoch: the sampler's shuffle and the loader generator (worker base seeds)."""
    sampler = loader.batch_sampler
    sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(mix_seed(sampler.seed, epoch, sampler.rank))


class _Pixels(Dataset):
    """Items ``indices`` of an ImageDataset as (uint8 (3, H, W), label), transform not applied."""

    def __init__(self, base: ImageDataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[Tensor, int]:
        i = self.indices[j]
        return self.base.load_uint8(i), self.base.targets[i]


class _TransformBatch:
    """Collate: stack equally sized images and transform the stack at once; a batch of mixed
    sizes is transformed image by image (the same result, slower)."""

    def __init__(self, transform: Callable[[Tensor], Tensor]) -> None:
        self.transform = transform

    def __call__(self, items: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        images = [im for im, _ in items]
        labels = torch.as_tensor([y for _, y in items], dtype=torch.int64)
        if len({im.shape for im in images}) == 1:
            return self.transform(torch.stack(images)), labels
        return torch.stack([self.transform(im) for im in images]), labels


def eval_loader(dataset: Dataset, indices: Sequence[int], *, batch_size: int,
                num_workers: int = 0) -> DataLoader:
    """A loader over items ``indices`` of ``dataset`` in order (no shuffle, no drop), yielding
    (images, labels). When the dataset (or the ImageDataset under its Subsets) has a ``batched``
    transform and ImageDataset's own ``__getitem__`` (COCO's, which ignores ``transform``, keeps
    its path), images are read as uint8 and transformed a batch at a time: identical tensors,
    7x faster than per-image PIL transforms on Omniglot at 28 px, 21x on CIFAR-10 at 32 px
    (bench/eval_batching.py, one thread)."""
    base, idx = dataset, list(indices)
    while type(base) is Subset:  # a Subset subclass may change items: not unwrapped
        idx = [int(base.indices[i]) for i in idx]
        base = base.dataset
    transform = getattr(base, "transform", None)
    plain = type(base).__getitem__ is ImageDataset.__getitem__  # (transform(load(i)), target)
    if isinstance(base, ImageDataset) and plain and getattr(transform, "batched", False):
        return DataLoader(_Pixels(base, idx), batch_size=batch_size, shuffle=False,
                          num_workers=num_workers, drop_last=False,
                          collate_fn=_TransformBatch(transform))
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, drop_last=False)


def build_eval_dataset(cfg: ExperimentConfig) -> ImageDataset:
    """Split cfg.eval.split with the eval transform; items are (tensor (3, H, W), int label)."""
    spec = get_spec(cfg.data.dataset)
    return build_dataset(cfg.data, cfg.eval.split, transform=eval_transform(cfg.data, spec))
