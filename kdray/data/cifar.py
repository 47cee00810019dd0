"""CIFAR-10 / CIFAR-100 and the few-shot sets built from CIFAR-100: CIFAR-FS and FC100.

Sources, looked for under every data root (see ``kdray.data.base``):
- torchvision's python archives: ``cifar-10-batches-py/`` and ``cifar-100-python/`` (directly
  under the root or under ``cifar10/`` / ``cifar100/``), downloadable with data.download=true;
- for CIFAR-10 also the JPEG tarballs ``cifar10_jpg/cifar10_{train,test}.tar.gz`` (folders
  ``<split>/<class>/NNNN.jpg``), decoded once and cached as uint8 .npy files.

CIFAR-FS (Bertinetto et al., ICLR 2019) = 64/16/20 fine classes; FC100 (Oreshkin et al.,
NeurIPS 2018) = the fine classes of 12/4/4 superclasses. Both merge CIFAR-100 train + test
(600 images per class); split lists ship in ``splits/cifar_fs`` and ``splits/fc100``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pickle
import tarfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from kdray.checks import ConfigError
from kdray.data.base import (
    ArrayDataset,
    DataNotFoundError,
    cache_dir,
    data_roots,
    download,
    file_lock,
    save_atomic,
    select_classes,
)

if TYPE_CHECKING:
    from kdray.config import DataConfig

SPLIT_DIR = Path(__file__).parent / "splits"
ARCHIVES = {  # name -> (folder, alias folder, files, URL, torchvision class)
    "cifar10": ("cifar-10-batches-py", "cifar10",
                tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10"),
    "cifar100": ("cifar-100-python", "cifar100", ("train", "test", "meta"),
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100"),
}
# The published MD5 of every file of the python archives (as torchvision's CIFAR10 / CIFAR100
# list them): these files are pickles, and unpickling runs code, so a file is unpickled only when
# its bytes are the official ones.
MD5 = {
    "cifar10": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d",
                 "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                 "meta": "7973b15100ade9c7d40fb424638fde48"},
}
JPG_DIR = "cifar10_jpg"
JPG_FILES = {"train": "cifar10_train.tar.gz", "test": "cifar10_test.tar.gz"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _how(cfg: DataConfig, name: str) -> str:
    folder, _, _, url, tv = ARCHIVES[name]
    root = Path(cfg.root).expanduser()
    how = (f"run `python -c \"import torchvision; torchvision.datasets.{tv}('{root}', "
           f"download=True)\"` (or add `--set data.download=true`), which fetches {url} into "
           f"{root / folder}/")
    if name == "cifar10":
        how += (f"; or put the JPEG tarballs {JPG_FILES['train']} and {JPG_FILES['test']} "
                f"into {root / JPG_DIR}/")
    return how


def _archive_candidates(cfg: DataConfig, name: str) -> list[Path]:
    folder, alias = ARCHIVES[name][:2]
    return [d for r in data_roots(cfg) for d in (r / folder, r / alias / folder)]


def _find_archive(cfg: DataConfig, name: str) -> Path | None:
    files = ARCHIVES[name][2]
    for d in _archive_candidates(cfg, name):
        if all((d / f).is_file() for f in files):
            return d
    return None


def _find_jpg(cfg: DataConfig) -> Path | None:
    for r in data_roots(cfg):
        if all((r / JPG_DIR / f).is_file() for f in JPG_FILES.values()):
            return r / JPG_DIR
    return None


def _download(cfg: DataConfig, name: str) -> None:
    import torchvision.datasets as tvd

    root = Path(cfg.root).expanduser()
    folder, _, _, url, _ = ARCHIVES[name]
    by_hand = f"fetch {url} where there is network access and unpack it into {root}/ (giving {root / folder}/)"
    download(name, root, by_hand,
             lambda: getattr(tvd, ARCHIVES[name][4])(str(root), train=True, download=True))


def locate(cfg: DataConfig, name: str) -> tuple[str, Path]:
    """('python', archive dir) or ('jpg', tarball dir); downloads if allowed, else raises."""
    found = _find_archive(cfg, name)
    if found is None and name == "cifar10" and (jpg := _find_jpg(cfg)) is not None:
        return "jpg", jpg
    if found is None and cfg.download:
        _download(cfg, name)
        found = _find_archive(cfg, name)
    if found is None:
        looked = _archive_candidates(cfg, name)
        if name == "cifar10":
            looked += [r / JPG_DIR / f for r in data_roots(cfg) for f in JPG_FILES.values()]
        raise DataNotFoundError(name, looked, _how(cfg, name))
    return "python", found


# ---------------------------------------------------------------------------- readers
class UntrustedFileError(ConfigError):
    """A CIFAR archive file whose bytes are not the published ones: it is never unpickled."""


def _unpickle(path: Path, archive: str) -> dict:
    """The pickle at `path`, after its MD5 matched the published one for its name in `archive`
    ("cifar10" / "cifar100"); anything else is refused before a byte of it is unpickled."""
    data = path.read_bytes()
    want = MD5[archive].get(path.name)
    got = hashlib.md5(data).hexdigest()
    if got != want:
        raise UntrustedFileError(
            f"{path}: MD5 {got} is not the published {want or '(no such file in the archive)'} "
            f"of {archive}'s {path.name}; the file is damaged or not the official archive, and "
            "kdray does not unpickle other files (unpickling can run code). Delete "
            f"{path.parent} and re-download it (--set data.download=true)")
    return pickle.loads(data, encoding="latin1")


def _to_hwc(flat: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(flat, dtype=np.uint8).reshape(-1, 3, 32, 32)
                                .transpose(0, 2, 3, 1))


@functools.lru_cache(maxsize=2)
def read_cifar10(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Images (60000, 32, 32, 3) uint8 (train then test), labels, is_train mask, class names."""
    d = Path(folder)
    batches = [_unpickle(d / f, "cifar10") for f in ARCHIVES["cifar10"][2][:6]]
    images = _to_hwc(np.concatenate([b["data"] for b in batches]))
    labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
    is_train = np.arange(len(labels)) < len(labels) - len(batches[-1]["labels"])  # test last
    return images, labels, is_train, list(_unpickle(d / "batches.meta", "cifar10")["label_names"])


@functools.lru_cache(maxsize=2)
def read_cifar100(folder: str) -> dict:
    """images (60000, 32, 32, 3) (train then test), fine, coarse, is_train, fine/coarse names."""
    d = Path(folder)
    parts = [_unpickle(d / "train", "cifar100"), _unpickle(d / "test", "cifar100")]
    meta = _unpickle(d / "meta", "cifar100")
    return {
        "images": _to_hwc(np.concatenate([p["data"] for p in parts])),
        "fine": np.concatenate([np.asarray(p["fine_labels"], dtype=np.int64) for p in parts]),
        "coarse": np.concatenate([np.asarray(p["coarse_labels"], dtype=np.int64) for p in parts]),
        "is_train": np.arange(sum(len(p["fine_labels"]) for p in parts)) < len(parts[0]["fine_labels"]),
        "fine_names": list(meta["fine_label_names"]),
        "coarse_names": list(meta["coarse_label_names"]),
    }


def _decode_jpegs(blobs: list[bytes]) -> np.ndarray:
    """(N, H, W, 3) uint8. torchvision's batch decoder (libjpeg-turbo, ~2x faster than PIL here;
    pixel-identical on these files) while it exists; PIL otherwise."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # deprecated in torchvision 0.29 in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
            images = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB)).permute(0, 2, 3, 1)
        return np.ascontiguousarray(images.numpy())
    except (ImportError, AttributeError, RuntimeError):
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def _decode_tar(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All JPEGs of a `<split>/<class>/<file>.jpg` tarball: (N, H, W, 3) uint8, labels, names."""
    blobs, folders = [], []
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg")):
                folders.append(m.name.split("/")[-2])
                blobs.append(tf.extractfile(m).read())
    names = sorted(set(folders))  # alphabetical = standard CIFAR-10 label order
    labels = np.asarray([names.index(f) for f in folders], dtype=np.int64)
    return _decode_jpegs(blobs), labels, names


def read_cifar10_jpg(cfg: DataConfig, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and labels of one tarball, via the .npy cache (decoded at most once)."""
    tar = folder / JPG_FILES[split]
    stem = f"{split}_{tar.stat().st_size}"  # the size keys the cache to the tarball
    out = cache_dir(cfg, JPG_DIR)
    img_path, lab_path = out / f"{stem}_images.npy", out / f"{stem}_labels.npy"
    with file_lock(out):
        if not (img_path.exists() and lab_path.exists()):
            images, labels, _ = _decode_tar(tar)
            save_atomic(lab_path, labels)
            save_atomic(img_path, images)
    return np.load(img_path, mmap_mode="r"), np.load(lab_path)


# ---------------------------------------------------------------------------- datasets
def build_cifar10(cfg: DataConfig, split: str) -> ArrayDataset:
    kind, folder = locate(cfg, "cifar10")
    if kind == "jpg":
        images, labels = read_cifar10_jpg(cfg, folder, split)
        return ArrayDataset(images, np.arange(len(labels)), labels, CIFAR10_CLASSES)
    images, labels, is_train, names = read_cifar10(str(folder))
    rows = np.flatnonzero(is_train == (split == "train"))
    return ArrayDataset(images, rows, labels[rows], names)


def build_cifar100(cfg: DataConfig, split: str) -> ArrayDataset:
    d = read_cifar100(str(locate(cfg, "cifar100")[1]))
    rows = np.flatnonzero(d["is_train"] == (split == "train"))
    return ArrayDataset(d["images"], rows, d["fine"][rows], d["fine_names"])


@functools.cache
def cifar_fs_classes(split: str) -> tuple[str, ...]:
    text = (SPLIT_DIR / "cifar_fs" / f"{split}.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@functools.cache
def fc100_superclasses(split: str) -> tuple[str, ...]:
    return tuple(json.loads((SPLIT_DIR / "fc100" / f"{split}.json").read_text()))


def _fine_subset(d: dict, keep: list[int]) -> ArrayDataset:
    rows, targets = select_classes(d["fine"], keep)
    return ArrayDataset(d["images"], rows, targets, [d["fine_names"][k] for k in keep])


def build_cifar_fs(cfg: DataConfig, split: str) -> ArrayDataset:
    d = read_cifar100(str(locate(cfg, "cifar100")[1]))
    return _fine_subset(d, [d["fine_names"].index(c) for c in cifar_fs_classes(split)])


def build_fc100(cfg: DataConfig, split: str) -> ArrayDataset:
    d = read_cifar100(str(locate(cfg, "cifar100")[1]))
    supers = {d["coarse_names"].index(s) for s in fc100_superclasses(split)}
    fine_to_coarse = np.zeros(len(d["fine_names"]), dtype=np.int64)
    fine_to_coarse[d["fine"]] = d["coarse"]
    return _fine_subset(d, [f for f in range(len(fine_to_coarse)) if fine_to_coarse[f] in supers])


def num_classes(name: str, split: str) -> int:
    if name == "cifar_fs":
        return len(cifar_fs_classes(split))
    if name == "fc100":
        return 5 * len(fc100_superclasses(split))  # every CIFAR-100 superclass has 5 fine classes
    return {"cifar10": 10, "cifar100": 100}[name]


def archive_of(name: str) -> str:
    """Which archive a dataset is built from."""
    return "cifar10" if name == "cifar10" else "cifar100"


def locate_for(name: str):
    def locate_fn(cfg: DataConfig, splits: Sequence[str] = ()) -> None:
        locate(cfg, archive_of(name))
    return locate_fn
