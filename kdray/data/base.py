"""Shared pieces of the data package: dataset base classes, data locations, caches, seeds.

Data is looked for under ``data.root`` first, then under each folder listed in the environment
variable ``KDRAY_DATA_PATH`` (``os.pathsep``-separated), e.g. a read-only shared data folder.
Caches (decoded JPEGs, the generated synthetic set) go to ``<data.root>/<name>/`` when that is
writable, else to ``$KDRAY_CACHE_DIR/<name>/`` (default ``~/.cache/kdray/<name>/``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from kdray.checks import UserError

if TYPE_CHECKING:
    from kdray.config import DataConfig

_MASK64 = (1 << 64) - 1

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
# CIFAR-100 statistics as used for CIFAR-FS / FC100 (docs/methods/smkd.md §1.3): (129.38, 124.11, 112.48)/255
CIFAR100_STATS = ((0.5074, 0.4867, 0.4411), (0.2675, 0.2566, 0.2763))


class DataNotFoundError(UserError, FileNotFoundError):
    """Dataset files are missing; the message names every path looked in and how to get them."""

    def __init__(self, dataset: str, looked_in: Sequence[Path | str], how: str) -> None:
        self.dataset = dataset
        self.looked_in = [str(p) for p in looked_in]
        paths = "\n".join(f"  {p}" for p in self.looked_in)
        self.how = how
        super().__init__(f"dataset {dataset!r} not found. Looked in:\n{paths}\nTo get it: {how}")

    def __reduce__(self) -> tuple:  # survives pickling (Ray ships worker errors to the driver)
        return type(self), (self.dataset, self.looked_in, self.how)


class DataDownloadError(UserError):
    """A download of a dataset failed (no network, a proxy, a moved URL, a full disk)."""

    def __init__(self, dataset: str, root: str, reason: str, how: str) -> None:
        self.args_ = (dataset, root, reason, how)
        super().__init__(f"data.download: downloading {dataset!r} into {root} failed ({reason}). "
                         f"Without network access, get it by hand: {how}")

    def __reduce__(self) -> tuple:
        return type(self), self.args_


def download(dataset: str, root: Path, how: str, fetch: Callable[[], None]) -> None:
    """Run `fetch` (a torchvision download into `root`) under the folder's lock; any failure
    becomes a DataDownloadError naming the dataset, the folder and how to get the files by hand."""
    try:
        with file_lock(root):
            fetch()
    except UserError:
        raise
    except Exception as e:  # URLError, HTTPError, socket timeouts, a corrupt or partial archive
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise DataDownloadError(dataset, str(root), reason.rstrip(": "), how) from e


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, build and normalise one dataset.

    Attributes:
        name: registry key.
        splits: valid split names.
        build: (cfg, split) -> ImageDataset; raises DataNotFoundError when files are missing.
        locate: (cfg, splits) -> None; cheap existence check (downloads when cfg.download and the
            dataset supports it), raises DataNotFoundError.
        num_classes: (cfg, split) -> number of classes, without loading images.
        mean, std: per-channel normalisation statistics (RGB, in [0, 1] units).
        native_size: side of the stored images; <= 32 selects pad-and-crop augmentation.
        flip: whether horizontal flips preserve the class (not for characters).
        eval_crop: eval resizes the short side to image_size / eval_crop, then centre-crops.
    """

    name: str
    splits: tuple[str, ...]
    build: Callable[[DataConfig, str], ImageDataset]
    locate: Callable[[DataConfig, Sequence[str]], None]
    num_classes: Callable[[DataConfig, str], int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: int
    flip: bool = True
    eval_crop: float = 1.0


class ImageDataset(Dataset):
    """Labelled images: `.targets` (labels 0..C-1 within the split), `.classes` (names).

    Subclasses implement `load(i) -> PIL.Image` (RGB). `__getitem__` returns
    ``(transform(image), label)``, or the PIL image itself when `transform` is None.
    """

    targets: list[int]
    classes: list[str]
    transform: Callable[[Image.Image], Any] | None = None

    def load(self, i: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_uint8(self, i: int) -> Tensor:
        """Image i as a (3, H, W) uint8 tensor, equal to the RGB pixels of `load(i)`. Datasets
        that hold pixel arrays override it to skip PIL (batched evaluation reads through it); a
        subclass that overrides `load` must override this too, or neither."""
        return torch.from_numpy(np.array(self.load(i), dtype=np.uint8)).permute(2, 0, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.load(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]


class ArrayDataset(ImageDataset):
    """Images held in one uint8 array, (N, H, W, 3) or (N, H, W); a split selects rows of it."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, targets: Sequence[int],
                 classes: Sequence[str]) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[self.rows[i]]).convert("RGB")

    def load_uint8(self, i: int) -> Tensor:
        return rgb_tensor(self.images[self.rows[i]])


def rgb_tensor(pixels: np.ndarray) -> Tensor:
    """(3, H, W) uint8 from (H, W) grayscale or (H, W, 3) RGB pixels, as PIL's RGB convert."""
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3)):
        raise ValueError(f"pixels of shape {pixels.shape}: expected (H, W) or (H, W, 3)")
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8))  # a copy: arrays may be read-only
    return t.expand(3, *t.shape) if t.ndim == 2 else t.permute(2, 0, 1)


def select_classes(labels: np.ndarray, keep: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """Rows whose label is in `keep`, and their new labels (position of the label in `keep`)."""
    remap = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    remap[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
    new = remap[labels]
    rows = np.flatnonzero(new >= 0)
    return rows, new[rows].tolist()


# ---------------------------------------------------------------------------- locations
def data_roots(cfg: DataConfig) -> list[Path]:
    """Folders searched for data: data.root, then KDRAY_DATA_PATH entries."""
    roots = [Path(cfg.root).expanduser()]
    extra = os.environ.get("KDRAY_DATA_PATH", "")
    roots += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return roots


def _writable(folder: Path) -> bool:
    """Writable for us *and* not marked read-only: a read-only shared data folder stays untouched
    even for root, whom os.access lets write anywhere."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def cache_dir(cfg: DataConfig, name: str) -> Path:
    """A writable folder for derived files of dataset `name` (see module docstring)."""
    preferred = Path(cfg.root).expanduser() / name
    with contextlib.suppress(OSError):
        if not preferred.exists():
            existing = next(p for p in preferred.parents if p.exists())
            if _writable(existing):
                preferred.mkdir(parents=True, exist_ok=True)
        if preferred.is_dir() and _writable(preferred):
            return preferred
    fallback = user_cache_dir(name)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def user_cache_dir(name: str) -> Path:
    """``$KDRAY_CACHE_DIR/<name>`` (default ``~/.cache/kdray/<name>``); not created here."""
    return Path(os.environ.get("KDRAY_CACHE_DIR", "~/.cache/kdray")).expanduser() / name


def save_atomic(path: Path, arrays: dict[str, np.ndarray] | np.ndarray) -> None:
    """Write an .npy (one array) or uncompressed .npz (a dict) via a temporary file and a rename,
    so concurrent readers never see a partial file. The temporary name carries the host, the
    process and a random part and is created exclusively (never through an existing file or
    link), so writers on several nodes of a shared folder cannot collide."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}."
                         f"{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if isinstance(arrays, dict):
                np.savez(f, **arrays)
            else:
                np.save(f, arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(folder: Path, name: str = ".kdray.lock") -> Iterator[None]:
    """Exclusive lock so that DDP workers on one node download or decode a dataset only once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- carved val
HOLDOUT_FRACTION = 0.1   # share of each class's train images held out as the carved val split
_HOLDOUT_SALT = 0x686F6C64


def holdout_rows(labels: Sequence[int] | np.ndarray, candidates: Sequence[int] | None = None,
                 fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """Sorted rows of a train split held out as its carved `val` split: for each class,
    round(fraction x n) (at least 1 when n >= 2) of its n candidate rows (default: all rows),
    drawn by a permutation seeded by the class id only, so the same rows on every run, machine
    and trial. Classes with fewer than two candidates keep all their rows in train."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    cand = np.arange(len(y)) if candidates is None else np.unique(np.asarray(candidates, np.int64))
    out = []
    for c in np.unique(y[cand]):
        rows = cand[y[cand] == c]
        if len(rows) < 2:
            continue
        k = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        rng = np.random.default_rng(mix_seed(_HOLDOUT_SALT, int(c)))
        out.append(rows[rng.permutation(len(rows))[:k]])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def holdout_ids(ids: Sequence[int], fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """Sorted positions in `ids` (e.g. COCO image ids) held out as a carved `val`, class-agnostic:
    the round(fraction x n) (at least 1 when n >= 2, never all) ids first in the order of a hash of
    the id alone, so an image's membership depends only on its id and the image set."""
    n = len(ids)
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    k = min(n - 1, max(1, int(round(fraction * n))))
    keys = np.array([mix_seed(_HOLDOUT_SALT, int(i)) for i in ids], dtype=np.uint64)
    return np.sort(np.argsort(keys, kind="stable")[:k]).astype(np.int64)


# ---------------------------------------------------------------------------- seeds
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (order matters); usable by torch.manual_seed."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1
