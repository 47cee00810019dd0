"""kdray.data samplers and loaders: sharding, class-aware batches, masks, multicrop, set_epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdray.config import ConfigError, ExperimentConfig
from kdray.data import build_eval_dataset, build_train_loader, set_epoch
from kdray.data.samplers import ClassAwareBatchSampler, ShardedBatchSampler, max_rounds

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_extra_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)


@pytest.fixture(scope="module")
def shared() -> Path:
    assert (SHARED / "omniglot").is_dir(), f"shared data missing at {SHARED}"  # fail, not skip
    return SHARED


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("syn"))


def small_syn(root: str, **kw) -> ExperimentConfig:
    """20 classes x 20 images: 13 train / 3 val / 4 test classes (round(3.2), round(4.0)).

    260 train images = 32 batches of 8."""
    over = {f"data.{k}": v for k, v in kw.items()}
    return ExperimentConfig().override({"data.root": root, "data.synthetic_classes": 20,
                                        "data.synthetic_per_class": 20, "data.batch_size": 8,
                                        **over})


# ---------------------------------------------------------------------------- samplers
def _keys(batches) -> list[list[int]]:
    return [[i for i, _ in b] for b in batches]


def test_sharded_sampler_union_equals_single_process() -> None:
    n, B = 103, 8
    single = ShardedBatchSampler(n, batch_size=B, seed=5)
    ranks = [ShardedBatchSampler(n, batch_size=B, rank=r, world=2, seed=5) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(3)
    one, parts = _keys(single), [_keys(r) for r in ranks]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 12 == len(one) == len(parts[0])
    assert all(len(b) == 4 for p in parts for b in p)
    for k in range(12):  # every global batch = union of the ranks' k-th batches
        assert sorted(parts[0][k] + parts[1][k]) == sorted(one[k])
    flat = [i for b in one for i in b]
    assert len(set(flat)) == 96  # no repeats; the 7 left over are dropped
    single.set_epoch(4)
    assert _keys(single) != one
    seeds = {i: s for b in ShardedBatchSampler(n, batch_size=B, seed=5) for i, s in b}
    assert len(set(seeds.values())) == len(seeds)  # distinct per-sample seeds


def test_max_rounds_hand_cases() -> None:
    assert max_rounds(np.array([5, 1, 1]), 2) == 2   # {0,1}, {0,2}; class 0 cannot pair with itself
    assert max_rounds(np.array([3, 3, 3, 3]), 2) == 6
    assert max_rounds(np.array([4, 0, 0]), 2) == 0
    assert max_rounds(np.array([2, 2, 1, 1]), 3) == 2


def test_class_aware_batches_exact_m_per_class() -> None:
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(10), rng.integers(5, 30, 10)).tolist()
    m, B = 3, 12  # 4 classes per global batch, 2 per rank
    single = ClassAwareBatchSampler(targets, m=m, batch_size=B, seed=1)
    ranks = [ClassAwareBatchSampler(targets, m=m, batch_size=B, rank=r, world=2, seed=1)
             for r in range(2)]
    one, parts = _keys(single), [_keys(r) for r in ranks]
    chunks = np.bincount(targets) // m
    assert len(one) == len(parts[0]) == len(parts[1]) == max_rounds(chunks, 4) > 0
    labels = np.asarray(targets)
    for k, batch in enumerate(one):
        assert sorted(np.unique(labels[batch], return_counts=True)[1].tolist()) == [m] * 4
        for p in parts:
            assert np.unique(labels[p[k]], return_counts=True)[1].tolist() == [m, m]
        assert sorted(parts[0][k] + parts[1][k]) == sorted(batch)
    flat = [i for b in one for i in b]
    assert len(flat) == len(set(flat))  # no image twice in an epoch
    with pytest.raises(ConfigError):
        ClassAwareBatchSampler(targets, m=4, batch_size=12, world=2)  # 6 per rank, m=4


# ---------------------------------------------------------------------------- loaders
def _epoch(loader, epoch: int, n: int | None = None) -> list:
    set_epoch(loader, epoch)
    return [b for _, b in zip(range(n or len(loader)), loader)]


def test_loader_ranks_cover_single_process_epoch(syn_root: str) -> None:
    for extra in ({}, {"class_aware": 2}):
        cfg = small_syn(syn_root, **extra)
        loaders = [build_train_loader(cfg, rank=0, world=1)] + [
            build_train_loader(cfg, rank=r, world=2) for r in range(2)]
        assert [len(ld) for ld in loaders] == [260 // 8] * 3
        one, *parts = (_epoch(ld, 1, 10) for ld in loaders)  # the first 10 batches
        for k, b in enumerate(one):
            assert sorted(parts[0][k].index.tolist() + parts[1][k].index.tolist()) == sorted(
                b.index.tolist())
        # a sample's augmentation depends on (seed, epoch, index) only, not on the rank
        pos = {int(i): j for j, i in enumerate(one[0].index)}
        j = pos[int(parts[1][0].index[0])]
        assert torch.equal(parts[1][0].views[0][0], one[0].views[0][j])
        if extra:
            labels = torch.cat([p[0].labels for p in parts])
            assert sorted(torch.unique(labels, return_counts=True)[1].tolist()) == [2] * 4


def test_multicrop_shapes_and_masks(syn_root: str) -> None:
    cfg = small_syn(syn_root, augment="multicrop", global_crops=2, local_crops=3, local_size=16,
                    mask_prob=1.0, mask_ratio=(0.25, 0.25), patch_size=4)
    b = _epoch(build_train_loader(cfg, rank=0, world=1), 0, 1)[0]
    assert [tuple(v.shape) for v in b.views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 for v in b.views) and b.labels.shape == (8,)
    assert len(b.masks) == 2 and all(m.shape == (8, 8, 8) and m.dtype == torch.bool for m in b.masks)
    assert b.masks[0].flatten(1).sum(1).tolist() == [16] * 8  # round(0.25 * 64)
    assert not torch.equal(b.masks[0], b.masks[1])
    plain = _epoch(build_train_loader(small_syn(syn_root), rank=0, world=1), 0, 1)[0]
    assert plain.masks is None and len(plain.views) == 1
    half = small_syn(syn_root, mask_prob=0.5)
    masked = torch.cat([b.masks[0].flatten(1).any(1) for b in _epoch(
        build_train_loader(half, rank=0, world=1), 0)])
    assert 0.3 < masked.float().mean() < 0.7  # 256 images, p = 0.5 (std 0.03)


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_reproducible(syn_root: str, workers: int) -> None:
    cfg = small_syn(syn_root, augment="multicrop", local_crops=1, mask_prob=0.5,
                    loader_workers=workers)
    a, b = (build_train_loader(cfg, rank=1, world=2) for _ in range(2))
    state = torch.get_rng_state()
    first = _epoch(a, 2, 3)
    assert torch.equal(state, torch.get_rng_state())  # the trainer's RNG is left alone
    _epoch(b, 0, 1)  # b has run another epoch before: must not matter
    for x, y in zip(first, _epoch(b, 2, 3)):
        assert all(torch.equal(u, v) for u, v in zip(x.views + x.masks, y.views + y.masks))
        assert torch.equal(x.labels, y.labels) and torch.equal(x.index, y.index)
    ref = _epoch(build_train_loader(cfg.override({"data.loader_workers": 0}), rank=1, world=2), 2, 1)
    assert torch.equal(ref[0].views[0], first[0].views[0])  # same batches with or without workers
    assert not torch.equal(_epoch(a, 3, 1)[0].index, first[0].index)


def test_transforms_and_eval_dataset(syn_root: str, shared: Path) -> None:
    cfg = small_syn(syn_root).override({"eval.split": "val"})
    x, y = build_eval_dataset(cfg)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert -3 < float(x.mean()) < 3 and float(x.std()) > 0.3  # normalised, not [0, 255]
    omni = ExperimentConfig().override({"data.dataset": "omniglot", "data.root": str(shared),
                                        "data.image_size": 28, "eval.split": "val",
                                        "data.batch_size": 4})
    x, _ = build_eval_dataset(omni)[0]
    assert x.shape == (3, 28, 28) and abs(float(x.mean())) < 1.0  # omniglot stats, near 0 mean
    b = _epoch(build_train_loader(omni, rank=0, world=1), 0, 1)[0]
    assert b.views[0].shape == (4, 3, 28, 28)
    with pytest.raises(ConfigError, match="divisible"):
        build_train_loader(small_syn(syn_root), rank=0, world=3)
