"""Sharded batch samplers for DDP training (no reliance on Ray's prepare_data_loader).

Both samplers first build the *global* batches of an epoch (identical on every rank: they depend
only on (seed, epoch)), then give rank r its slice of each global batch. Hence every rank yields
the same number of batches (no DDP hang), and the union of all ranks' batches equals the
single-process epoch, batch by batch. Incomplete global batches are dropped.

Each yielded item is ``(dataset index, sample seed)``; the seed, a hash of (seed, epoch, index),
drives that sample's augmentation and mask, so batches do not depend on the number of DataLoader
workers or on the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from kdray.config import ConfigError
from kdray.data.base import mix_seed

Key = tuple[int, int]


class _ShardedBase(Sampler[list[Key]]):
    def __init__(self, *, batch_size: int, rank: int, world: int, seed: int) -> None:
        if batch_size % world:
            raise ConfigError(f"data.batch_size={batch_size} is not divisible by {world} workers")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.local_batch = batch_size // world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> np.ndarray:  # pragma: no cover - abstract
        """(num_batches, batch_size) dataset indices of this epoch, the same on every rank."""
        raise NotImplementedError

    def _shard(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in self.global_batches():
            yield [(int(i), mix_seed(self.seed, self.epoch, int(i))) for i in self._shard(batch)]


class ShardedBatchSampler(_ShardedBase):
    """Uniformly shuffled batches without replacement; rank r takes positions r, r+world, ..."""

    def __init__(self, n: int, *, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, rank=rank, world=world, seed=seed)
        self.n = n

    def __len__(self) -> int:
        return self.n // self.batch_size

    def global_batches(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch, 0]).permutation(self.n)
        return perm[: len(self) * self.batch_size].reshape(len(self), self.batch_size)

    def _shard(self, batch: np.ndarray) -> np.ndarray:
        return batch[self.rank::self.world]


class RepeatedAugBatchSampler(ShardedBatchSampler):
    """Repeated augmentation (DeiT's `RASampler`): an epoch draws ceil(n / repeats) images and
    shows each `repeats` times, every copy with its own sample seed (so its own augmentation).
    Copies are adjacent in the global order, so the rank slicing puts them on different ranks as
    in DeiT. An epoch keeps n // batch_size batches."""

    def __init__(self, n: int, *, repeats: int, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0) -> None:
        super().__init__(n, batch_size=batch_size, rank=rank, world=world, seed=seed)
        self.repeats = repeats

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        """(num_batches, batch_size) dataset indices and copy numbers of this epoch."""
        perm = np.random.default_rng([self.seed, self.epoch, 2]).permutation(self.n)
        drawn = -(-self.n // self.repeats)
        m = len(self) * self.batch_size
        idx = np.repeat(perm[:drawn], self.repeats)[:m]
        copy = np.tile(np.arange(self.repeats), drawn)[:m]
        return idx.reshape(len(self), -1), copy.reshape(len(self), -1)

    def global_batches(self) -> np.ndarray:
        return self._order()[0]

    def __iter__(self) -> Iterator[list[Key]]:
        for idx, copy in zip(*self._order()):
            yield [(int(i), mix_seed(self.seed, self.epoch, int(i), int(c)))
                   for i, c in zip(self._shard(idx), self._shard(copy))]


def max_rounds(chunks: np.ndarray, k: int) -> int:
    """Most batches of k distinct classes that can be formed from `chunks[c]` chunks per class.

    R batches are feasible iff sum_c min(chunks[c], R) >= k * R (a class joins a batch at most
    once); the feasible R form an interval starting at 0.
    """
    r = int(chunks.sum()) // k
    while r > 0 and int(np.minimum(chunks, r).sum()) < k * r:
        r -= 1
    return r


class ClassAwareBatchSampler(_ShardedBase):
    """Batches of `batch_size / m` distinct classes with exactly m images each.

    Each class's images are shuffled and cut into chunks of m (a remainder < m is unused this
    epoch). Every global batch takes one chunk from each of the k = batch_size / m classes with
    the most chunks left (random tie-break): this greedy order always completes the maximal
    number of batches. A rank gets `batch_size / world / m` whole classes of each batch.
    """

    def __init__(self, targets: Sequence[int], *, m: int, batch_size: int, rank: int = 0,
                 world: int = 1, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, rank=rank, world=world, seed=seed)
        if m < 1 or self.local_batch % m:
            raise ConfigError(f"data.class_aware={m} must divide the per-worker batch "
                              f"{self.local_batch}")
        labels = np.asarray(targets, dtype=np.int64)
        self.m, self.k = m, batch_size // m
        self._members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self._chunks = np.asarray([len(ix) // m for ix in self._members], dtype=np.int64)
        self._len = max_rounds(self._chunks, self.k)

    def __len__(self) -> int:
        return self._len

    def global_batches(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        members = [rng.permutation(ix) for ix in self._members]
        left = self._chunks.copy()
        used = np.zeros_like(left)
        out = np.empty((self._len, self.batch_size), dtype=np.int64)
        for j in range(self._len):
            chosen = np.lexsort((rng.random(len(left)), -left))[: self.k]
            if left[chosen[-1]] <= 0:  # cannot happen when max_rounds holds
                raise RuntimeError("class-aware sampler ran out of classes")
            for t, c in enumerate(rng.permutation(chosen)):
                out[j, t * self.m:(t + 1) * self.m] = members[c][used[c] * self.m:(used[c] + 1) * self.m]
            used[chosen] += 1
            left[chosen] -= 1
        return out[rng.permutation(self._len)]

    def _shard(self, batch: np.ndarray) -> np.ndarray:
        return batch[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
