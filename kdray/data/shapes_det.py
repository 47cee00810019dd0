"""`shapes_det`: a generated detection set in COCO layout (no download needed), for the MKD mini.

Each 128 x 128 image has a cluttered background (the `synthetic_fs` one: tinted grey, soft blobs,
thin lines, pixel noise) and 1-3 objects. An object is one of three shapes (the class: disk,
triangle, cross) in a random solid colour, with a random rotation and a box side of 24-56 px; boxes never overlap, so nothing is occluded. Boxes are exact: the tight
box of the rendered shape, computed on the 2x supersampled mask (so they are in pixel units with
0.5 px resolution), written as COCO ``[x, y, w, h]``.

Why it exists: COCO128 is 128 images of 80 classes, too few for a detector trained from scratch on
a CPU to reach a non-zero AP within the mini tier's budget (docs/methods/mkd.md §2.10). Here the
colour is a nuisance and the shape is the class, so a small RetinaNet learns it in a few hundred
steps (val AP50 0.44 after 400 steps of 8 images) while a stronger teacher still has something
to teach. Version 1 (five shapes with textures) stayed at val AP50 0.24 however long the
student trained: it found the objects but could not tell the shapes apart in that budget.

Splits: `train` (2,400 images) and `test` (600 images) are drawn from two different seeds;
`val` is carved from `train` like COCO's (`kdray.data.coco.build`). The files are generated once
(~15 s) into ``<data.root>/shapes_det/v<VERSION>/`` or the cache folder (`cache_dir`):
``train/*.png``, ``test/*.png`` and ``annotations/instances_{train,test}.json``; a complete set is
marked by ``DONE`` and reused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from kdray.data import synthetic as S
from kdray.data.base import cache_dir, file_lock

if TYPE_CHECKING:
    from kdray.config import DataConfig

VERSION = 2
SIZE = 128
CLASSES = ("disk", "triangle", "cross")
SPLIT_SIZES = {"train": 2400, "test": 600}
_SPLIT_SEED = {"train": 1, "test": 2}
_SS = 2                    # supersampling of the shape masks
_SIDE = (24.0, 56.0)       # box side range before rotation, px
_MAX_IOU = 0.0            # boxes never overlap, so no object is occluded


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def _window(c: float, r: float) -> slice:
    """Supersampled rows / columns that can hold a shape of radius r centred at c (px); every
    shape lies within 1.05 r of its centre."""
    lo = max(0, int(np.floor((c - 1.1 * r - 1) * _SS)))
    return slice(lo, min(SIZE * _SS, int(np.ceil((c + 1.1 * r + 1) * _SS))))


def _place(rng: np.random.Generator, cls: int, cx: float, cy: float, r: float,
           ) -> tuple[tuple[slice, slice], np.ndarray]:
    """A shape of class `cls` centred at (cx, cy) px with radius r px, random rotation: its
    supersampled window (rows, cols) and the mask in that window."""
    rows, cols = _window(cy, r), _window(cx, r)
    ys = (np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5) / _SS
    xs = (np.arange(cols.start, cols.stop, dtype=np.float32) + 0.5) / _SS
    Y, X = np.meshgrid(ys, xs, indexing="ij")
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = (X - cx) / r, (Y - cy) / r
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    return (rows, cols), S.SHAPES[CLASSES[cls]](u, v)


def tight_box(rows: slice, cols: slice, mask: np.ndarray) -> np.ndarray | None:
    """[x0, y0, x1, y1] px of a supersampled window mask (None when empty): supersampled pixel
    (i, j) covers [j, j + 1) / _SS horizontally and [i, i + 1) / _SS vertically."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min() + cols.start, ys.min() + rows.start,
                     xs.max() + cols.start + 1, ys.max() + rows.start + 1], np.float64) / _SS


def render(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[list[float], int]]]:
    """One image (SIZE, SIZE, 3) uint8 and its objects [([x0, y0, x1, y1] px, class)].

    The box is the tight box of the supersampled mask: pixel (i, j) of the supersampled grid
    covers [j, j+1) / _SS horizontally, so the box is exact to 1 / _SS px."""
    img = S._background(rng, 1, *S._grid(SIZE))[0]
    palettes = S._palette_rgb()
    inside = np.zeros((SIZE * _SS, SIZE * _SS), dtype=bool)
    objects: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(20):
            cls = int(rng.integers(len(CLASSES)))
            r = rng.uniform(*_SIDE) / 2
            cx, cy = rng.uniform(r, SIZE - r, size=2)
            (rows, cols), mask = _place(rng, cls, cx, cy, r)
            box = tight_box(rows, cols, mask)
            if box is None:
                continue
            if all(_iou(box, np.array(b)) <= _MAX_IOU for b, _ in objects):
                break
        else:
            continue
        inside[:] = False
        inside[rows, cols] = mask
        # a palette's two colours with jitter, as synthetic_fs draws them; solid shapes use the
        # first (the second was v1's texture colour; drawing it keeps v2's random stream)
        colour = (palettes[int(rng.integers(len(palettes)))] + rng.uniform(-0.06, 0.06, (2, 3)))[0]
        alpha = S._box_down(inside[None])[0][..., None]
        img = img * (1 - alpha) + colour * alpha
        objects.append((box.tolist(), cls))
    img = img + 0.03 * rng.standard_normal(img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), objects


def generate(folder: Path, split: str, n: int) -> None:
    """Write `n` images of `split` and their COCO json under `folder`."""
    rng = np.random.default_rng([VERSION, _SPLIT_SEED[split]])
    (folder / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, objects = render(rng)
        name = f"{i:05d}.png"
        Image.fromarray(img).save(folder / split / name)
        images.append({"id": i + 1, "file_name": name, "width": SIZE, "height": SIZE})
        for (x0, y0, x1, y1), cls in objects:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                         "iscrowd": 0})
    cats = [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(CLASSES)]
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def folder(cfg: DataConfig) -> Path:
    """The generated set (generated on first use; later calls only check the DONE marker)."""
    out = cache_dir(cfg, "shapes_det") / f"v{VERSION}"
    if (out / "DONE").exists():
        return out
    with file_lock(out):
        if not (out / "DONE").exists():
            for split, n in SPLIT_SIZES.items():
                generate(out, split, n)
            (out / "DONE").write_text("complete\n")
    return out


def split_paths(cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """(image folder, annotation json); the carved `val` reads `train`'s."""
    base = folder(cfg)
    s = "train" if split == "val" else split
    return base / s, base / "annotations" / f"instances_{s}.json"


def locate(cfg: DataConfig, splits: Sequence[str]) -> None:
    """Nothing to find: the set is generated on first use (a cheap check that the names exist)."""
    unknown = set(splits) - {"train", "val", "test"}
    if unknown:
        from kdray.config import ConfigError
        raise ConfigError(f"shapes_det has splits train, val, test; got {sorted(unknown)}")


def num_classes(cfg: DataConfig, split: str) -> int:
    return len(CLASSES)
