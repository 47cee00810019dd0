"""Evaluation loaders transform a batch at a time (`kdray.data.loader.eval_loader`): the tensors
must equal the per-image path (`dataset[i]`) exactly, for real Omniglot, array datasets (gray and
RGB, resized or not), rows of a dataset, Subset chains, and batches of mixed image sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from kdray.config import DataConfig
from kdray.data.base import ArrayDataset, ImageDataset
from kdray.data.fscil import RowsDataset
from kdray.data.loader import _Pixels, eval_loader
from kdray.data.registry import build_dataset, get_spec
from kdray.data.transforms import eval_transform
from kdray.eval.fewshot import extract_features


def per_image(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def batched(dataset, indices, batch_size=7) -> tuple[torch.Tensor, torch.Tensor, bool]:
    loader = eval_loader(dataset, indices, batch_size=batch_size)
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys), isinstance(loader.dataset, _Pixels)


def test_omniglot_batches_equal_per_image_transforms(shared_data):
    cfg = DataConfig(dataset="omniglot", root=str(shared_data), image_size=28)
    ds = build_dataset(cfg, "test", eval_transform(cfg, get_spec("omniglot")))
    idx = [0, 1, 19, 20, 21, 500, 1000, 1001, 1500, len(ds) - 1]  # rotations 0/90/180/270
    x, y, fast = batched(ds, idx, batch_size=4)
    ref_x, ref_y = per_image(ds, idx)
    assert fast and x.shape == (10, 3, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    # the reference really is the PIL path: rotated drawings differ from the upright one
    assert not torch.equal(ref_x[0], ref_x[2])


@pytest.mark.parametrize("gray", [True, False])
@pytest.mark.parametrize("crop", [1.0, 0.875])
def test_array_batches_equal_per_image_transforms(gray, crop):
    rng = np.random.default_rng(0)
    shape = (12, 40, 40) if gray else (12, 40, 40, 3)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(12)[::-1].copy(), list(range(12)), [str(i) for i in range(12)])
    cfg = DataConfig(image_size=32)
    ds.transform = eval_transform(cfg, get_spec("cifar10"), crop=crop)
    idx = [3, 0, 11, 5, 6]
    x, y, fast = batched(ds, idx, batch_size=2)
    ref_x, ref_y = per_image(ds, idx)
    assert fast and torch.equal(x, ref_x) and torch.equal(y, ref_y)
    assert y.tolist() == idx
    # item 3 is row 8 (rows reversed); gray pixels are repeated over the three channels
    pixels = torch.from_numpy(images[8]).expand(3, 40, 40) if gray else \
        torch.from_numpy(images[8]).permute(2, 0, 1)
    assert torch.equal(ds.load_uint8(3), pixels)


def test_rows_and_subset_chains_compose_their_indices():
    images = np.arange(20 * 8 * 8 * 3, dtype=np.int64).reshape(20, 8, 8, 3).astype(np.uint8)
    parent = ArrayDataset(images, np.arange(20), list(range(20)), [str(i) for i in range(20)])
    rows = RowsDataset(parent, np.array([19, 2, 7, 4, 11]))
    rows.transform = eval_transform(DataConfig(image_size=8), get_spec("cifar10"), crop=1.0)
    chained = Subset(Subset(rows, [4, 3, 2, 1]), [3, 0, 2])  # rows 1, 4, 2 -> parent 2, 11, 7
    x, y, fast = batched(chained, [0, 1, 2])
    ref_x, ref_y = per_image(chained, [0, 1, 2])
    assert fast and torch.equal(x, ref_x) and y.tolist() == ref_y.tolist() == [2, 11, 7]


class _Sized(ImageDataset):
    """RGB images whose size depends on the index (only the default `load_uint8`)."""

    def __init__(self, n: int) -> None:
        self.targets = list(range(n))
        self.classes = [str(i) for i in range(n)]

    def load(self, i: int) -> Image.Image:
        rng = np.random.default_rng(i)
        side = 30 + 6 * (i % 3)
        return Image.fromarray(rng.integers(0, 256, (side, side + i % 2, 3), dtype=np.uint8))


def test_mixed_sizes_and_default_pixels_equal_per_image_transforms():
    ds = _Sized(9)
    ds.transform = eval_transform(DataConfig(image_size=24), get_spec("cifar10"), crop=0.875)
    x, y, fast = batched(ds, range(9), batch_size=4)
    ref_x, ref_y = per_image(ds, range(9))
    assert fast and torch.equal(x, ref_x) and torch.equal(y, ref_y)
    assert torch.equal(ds.load_uint8(4), torch.from_numpy(np.array(ds.load(4))).permute(2, 0, 1))


def test_a_transform_that_is_not_batched_keeps_the_per_image_path():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(4), [0, 1, 2, 3], list("abcd"))
    ds.transform = lambda img: torch.full((1,), float(np.array(img).sum() + 1))
    x, y, fast = batched(ds, [2, 1])
    assert not fast and x.tolist() == [[1.0], [1.0]] and y.tolist() == [2, 1]


def test_features_from_the_batched_path_equal_the_per_image_ones(shared_data):
    cfg = DataConfig(dataset="omniglot", root=str(shared_data), image_size=28)
    ds = build_dataset(cfg, "val", eval_transform(cfg, get_spec("omniglot")))
    sub = Subset(ds, list(range(0, len(ds), 97)))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=3), torch.nn.Flatten())
    feats, labels = extract_features(net, sub, batch_size=16, device="cpu")
    ref_x, ref_y = per_image(sub, range(len(sub)))
    assert torch.equal(labels, ref_y)
    torch.testing.assert_close(feats, net(ref_x), rtol=0, atol=1e-6)


def test_datasets_with_their_own_items_keep_their_path():
    """A dataset whose `__getitem__` is not ImageDataset's (COCO's ignores `transform`) and a
    Subset subclass are not bypassed by the batched path."""
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)

    class OwnItems(ArrayDataset):
        def __getitem__(self, i):
            return torch.full((2,), float(i)), 7

    ds = OwnItems(images, np.arange(4), [0, 1, 2, 3], list("abcd"))
    ds.transform = eval_transform(DataConfig(image_size=8), get_spec("cifar10"), crop=1.0)
    x, y, fast = batched(ds, [3, 1])
    assert not fast and x.tolist() == [[3.0, 3.0], [1.0, 1.0]] and y.tolist() == [7, 7]

    class Shifted(Subset):
        def __getitem__(self, j):
            img, label = super().__getitem__(j)
            return img + 1, label

        def __getitems__(self, js):
            return [self[j] for j in js]

    plain = ArrayDataset(images, np.arange(4), [0, 1, 2, 3], list("abcd"))
    plain.transform = ds.transform
    x, _, fast = batched(Shifted(plain, [0, 1]), [0, 1])
    assert not fast and torch.equal(x, per_image(plain, [0, 1])[0] + 1)


def test_pixels_of_another_shape_are_refused():
    from kdray.data.base import rgb_tensor

    assert rgb_tensor(np.zeros((5, 6), dtype=np.uint8)).shape == (3, 5, 6)
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(H, W, 3\)"):
        rgb_tensor(np.zeros((5, 6, 4), dtype=np.uint8))
