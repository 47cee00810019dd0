"""`synthetic_fs`: a generated few-shot dataset of 32x32 RGB images (no download needed).

A class is a combination shape x colour palette x texture (10 x 10 x 4 = 400 possible classes);
`data.synthetic_classes` of them are picked by a fixed seeded permutation and split 64/16/20 %
into train/val/test classes. Novel (val/test) classes recombine attributes seen in training, so
features learnt on the train classes transfer, as in real few-shot benchmarks. Every image has a
random rotation, translation and scale, a cluttered background (tinted grey, soft blobs, lines),
a random texture phase, colour jitter and pixel noise.

Generation is vectorised numpy (2x supersampled for anti-aliasing, chunks of 1,000 images) and
takes about a second for 6,000 images; the result is cached as an .npz under
``<data.root>/synthetic_fs/`` keyed by (classes, per_class, seed=0, generator version).
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kdray.config import ConfigError
from kdray.data.base import ArrayDataset, cache_dir, file_lock, save_atomic, select_classes

if TYPE_CHECKING:
    from kdray.config import DataConfig

VERSION = 1          # bump when the images change, so stale caches are not reused
SEED = 0             # the dataset is one fixed sample; experiments vary their own seeds
SIZE = 32
_SS = 2              # supersampling factor
_CHUNK = 1000
# mean / std of the default 100-class set, all splits (tests/test_data.py re-computes them)
STATS = ((0.4957, 0.4873, 0.4901), (0.2131, 0.2139, 0.2138))

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _regular_polygon(n: int, apothem: float) -> Mask:
    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        phi = np.arctan2(v, u) % (2 * np.pi / n) - np.pi / n
        return np.hypot(u, v) * np.cos(phi) < apothem
    return inside


# Shapes in local coordinates (radius ~1). None is rotation-equivalent to another.
SHAPES: dict[str, Mask] = {
    "disk": lambda u, v: np.hypot(u, v) < 0.9,
    "square": lambda u, v: np.maximum(abs(u), abs(v)) < 0.72,
    "triangle": _regular_polygon(3, 0.5),
    "cross": lambda u, v: ((abs(u) < 0.3) & (abs(v) < 0.95)) | ((abs(v) < 0.3) & (abs(u) < 0.95)),
    "ring": lambda u, v: (np.hypot(u, v) < 0.95) & (np.hypot(u, v) > 0.55),
    "star": lambda u, v: np.hypot(u, v) < 0.4 + 0.6 * ((1 + np.cos(5 * np.arctan2(v, u))) / 2) ** 2,
    "halfdisk": lambda u, v: (np.hypot(u, v + 0.35) < 1.0) & (v > -0.35),
    "bar": lambda u, v: (abs(u) < 0.95) & (abs(v) < 0.3),
    "ell": lambda u, v: ((u > -0.8) & (u < -0.2) & (abs(v) < 0.8))
    | ((abs(u) < 0.8) & (v > -0.8) & (v < -0.2)),
    "crescent": lambda u, v: (np.hypot(u, v) < 0.9) & (np.hypot(u - 0.45, v) > 0.7),
}
PALETTES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "purple", "pink")
TEXTURES = ("solid", "stripes", "checker", "dots")
_K = 3 * np.pi       # texture angular frequency in local units: ~3 periods across a shape


def _texture(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where the secondary palette colour shows."""
    if kind == 0:
        return np.zeros(u.shape, dtype=bool)
    if kind == 1:
        return np.sin(_K * u) > 0
    if kind == 2:
        return np.sin(_K * u) * np.sin(_K * v) > 0
    return np.cos(_K * u) + np.cos(_K * v) > 1.0


def _palette_rgb() -> np.ndarray:
    """(10, 2, 3): primary (bright) and secondary (dark) colour per palette."""
    out = np.zeros((len(PALETTES), 2, 3), dtype=np.float32)
    for p in range(len(PALETTES)):
        out[p, 0] = colorsys.hsv_to_rgb(p / len(PALETTES), 0.85, 0.95)
        out[p, 1] = colorsys.hsv_to_rgb(p / len(PALETTES), 0.9, 0.4)
    return out


def class_table(num_classes: int) -> np.ndarray:
    """(C, 3) int (shape, palette, texture) per class, a fixed seeded choice of combinations."""
    total = len(SHAPES) * len(PALETTES) * len(TEXTURES)
    if num_classes > total:
        raise ConfigError(f"data.synthetic_classes={num_classes}: synthetic_fs has at most {total}")
    combos = np.random.default_rng(SEED).permutation(total)[:num_classes]
    s, rest = np.divmod(combos, len(PALETTES) * len(TEXTURES))
    p, t = np.divmod(rest, len(TEXTURES))
    return np.stack([s, p, t], axis=1)


def class_names(table: np.ndarray) -> list[str]:
    shapes = list(SHAPES)
    return [f"{shapes[s]}-{PALETTES[p]}-{TEXTURES[t]}" for s, p, t in table]


def split_classes(num_classes: int) -> dict[str, np.ndarray]:
    """Class ids per split, 64/16/20 % (at least one class each)."""
    n_val = max(1, int(round(0.16 * num_classes)))
    n_test = max(1, int(round(0.20 * num_classes)))
    n_train = num_classes - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"data.synthetic_classes={num_classes}: need at least 3 classes")
    ids = np.arange(num_classes)
    return {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
            "test": ids[n_train + n_val:]}


def _u(rng: np.random.Generator, low: float, high: float, shape: tuple) -> np.ndarray:
    return (low + (high - low) * rng.random(shape, dtype=np.float32)).astype(np.float32)


def _background(rng: np.random.Generator, n: int, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) float32: tinted grey with soft coloured blobs and thin lines."""
    grey = _u(rng, 0.15, 0.85, (n, 1, 1, 1)) + _u(rng, -0.08, 0.08, (n, 1, 1, 3))
    img = np.broadcast_to(grey, (n, *X.shape, 3)).copy()
    for _ in range(3):  # blobs: desaturated random colours
        c = 0.5 * _u(rng, 0, 1, (n, 1, 1, 3)) + 0.5 * _u(rng, 0, 1, (n, 1, 1, 1))
        cx, cy = _u(rng, -1, 1, (2, n, 1, 1))
        inv = 1 / (2 * _u(rng, 0.15, 0.5, (n, 1, 1)) ** 2)
        a = _u(rng, 0.3, 0.7, (n, 1, 1)) * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) * inv)
        img += a[..., None] * (c - img)
    for _ in range(2):  # lines through a random point
        c = _u(rng, 0, 1, (n, 1, 1, 1))
        px, py = _u(rng, -1, 1, (2, n, 1, 1))
        ang = _u(rng, 0, np.pi, (n, 1, 1))
        dist = np.abs((X - px) * np.sin(ang) - (Y - py) * np.cos(ang))
        on = (dist < 0.05)[..., None]
        img = np.where(on, 0.5 * img + 0.5 * c, img)
    return img


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    g = (np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1
    Y, X = np.meshgrid(g, g, indexing="ij")
    return X, Y


def _box_down(a: np.ndarray) -> np.ndarray:
    """Average _SS x _SS pixel blocks of (n, H, W, ...) (strided sums; faster than reshape-mean)."""
    out = sum(a[:, i::_SS, j::_SS].astype(np.float32) for i in range(_SS) for j in range(_SS))
    return out / (_SS * _SS)


def _render(rng: np.random.Generator, attrs: np.ndarray, palettes: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) uint8 images for `attrs` (n, 3) = (shape, palette, texture)."""
    n = len(attrs)
    X, Y = _grid(SIZE * _SS)  # the shape is drawn supersampled, the smooth background is not
    theta = _u(rng, 0, 2 * np.pi, (n, 1, 1))
    scale = _u(rng, 0.45, 0.8, (n, 1, 1))
    tx, ty = _u(rng, -0.3, 0.3, (2, n, 1, 1))
    dx, dy = X - tx, Y - ty
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / scale
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / scale
    phase = _u(rng, 0, 2 * np.pi / _K, (2, n, 1, 1))
    inside = np.zeros(u.shape, dtype=bool)
    second = np.zeros(u.shape, dtype=bool)
    for k, shape in enumerate(SHAPES.values()):
        sel = attrs[:, 0] == k
        inside[sel] = shape(u[sel], v[sel])
    for k in range(len(TEXTURES)):
        sel = attrs[:, 2] == k
        second[sel] = _texture(k, u[sel] + phase[0, sel], v[sel] + phase[1, sel])
    colours = palettes[attrs[:, 1]] + _u(rng, -0.06, 0.06, (n, 2, 3))
    # box-filter to 32 px: alpha = covered share of a pixel, beta = share in the secondary colour
    alpha = _box_down(inside)[..., None]
    beta = _box_down(inside & second)[..., None]
    img = (_background(rng, n, *_grid(SIZE)) * (1 - alpha)
           + colours[:, None, None, 0] * (alpha - beta) + colours[:, None, None, 1] * beta)
    img += 0.03 * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(num_classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """All images and labels: (C * per_class, 32, 32, 3) uint8, (C * per_class,) int64."""
    table = class_table(num_classes)
    labels = np.repeat(np.arange(num_classes), per_class)
    rng = np.random.default_rng([SEED, num_classes, per_class])
    palettes = _palette_rgb()
    chunks = [_render(rng, table[labels[i:i + _CHUNK]], palettes)
              for i in range(0, len(labels), _CHUNK)]
    return np.concatenate(chunks), labels


def cache_path(cfg: DataConfig):
    name = f"synthetic_fs_c{cfg.synthetic_classes}_n{cfg.synthetic_per_class}_s{SEED}_v{VERSION}.npz"
    return cache_dir(cfg, "synthetic_fs") / name


def load_arrays(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the whole set, from the cache or freshly generated (then cached)."""
    path = cache_path(cfg)
    with file_lock(path.parent):
        if not path.exists():
            images, labels = generate(cfg.synthetic_classes, cfg.synthetic_per_class)
            save_atomic(path, {"images": images, "labels": labels})
    with np.load(path) as z:
        return z["images"], z["labels"]


def build(cfg: DataConfig, split: str) -> ArrayDataset:
    images, labels = load_arrays(cfg)
    keep = split_classes(cfg.synthetic_classes)[split]
    rows, targets = select_classes(labels, keep)
    names = class_names(class_table(cfg.synthetic_classes))
    return ArrayDataset(images, rows, targets, [names[c] for c in keep])


def locate(cfg: DataConfig, splits: Sequence[str]) -> None:
    split_classes(cfg.synthetic_classes)  # validates the class count; data is generated on demand
    class_table(cfg.synthetic_classes)


def num_classes(cfg: DataConfig, split: str) -> int:
    return len(split_classes(cfg.synthetic_classes)[split])
