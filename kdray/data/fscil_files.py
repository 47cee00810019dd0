"""File-based FSCIL datasets: mini-ImageNet (FSCIL split) and CUB-200-2011 (CEC index lists).

mini-ImageNet: the 100 classes x 600 images of mini-ImageNet, re-split 500 train / 100 test per
class by CEC's ``train.csv`` / ``test.csv`` (shipped in ``splits/fscil/mini_imagenet``); class ids
follow the order of first appearance in train.csv (CEC's loader). Images are read from one flat
folder, ``<root>/mini_imagenet/images/`` (kdray's mini-ImageNet layout) or
``<root>/miniimagenet/images/`` (CEC's ``data/miniimagenet/images``).

CUB-200-2011: the official archive extracted as ``<root>/CUB_200_2011/`` (or
``<root>/cub200/CUB_200_2011/``) with ``images.txt``, ``image_class_labels.txt``,
``train_test_split.txt`` and ``images/``; class id = official class number - 1; train/test =
the official split.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from kdray.data.base import DataNotFoundError, ImageDataset, data_roots
from kdray.data.fscil_protocol import LIST_DIR, PROTOCOLS, FscilData, read_list

if TYPE_CHECKING:
    from kdray.config import DataConfig

MINI_SUBDIRS = (Path("mini_imagenet") / "images", Path("miniimagenet") / "images")
CUB_SUBDIRS = (Path("CUB_200_2011"), Path("cub200") / "CUB_200_2011")
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


class FileDataset(ImageDataset):
    """Images given by file paths (loaded lazily as RGB)."""

    def __init__(self, paths: list[Path], targets: list[int], classes: list[str]) -> None:
        self.paths, self.targets, self.classes = paths, targets, classes

    def load(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            return img.convert("RGB")


# ---------------------------------------------------------------------------- mini-ImageNet
@functools.cache
def mini_csv(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(file names, wnids) of CEC's FSCIL ``train.csv`` / ``test.csv``."""
    with open(LIST_DIR / "mini_imagenet" / f"{split}.csv") as f:
        rows = list(csv.DictReader(f))
    return tuple(r["filename"] for r in rows), tuple(r["label"] for r in rows)


def locate_mini_imagenet(cfg: DataConfig) -> Path:
    """The flat image folder holding the first and last train and test images."""
    probes = [mini_csv(s)[0][k] for s in ("train", "test") for k in (0, -1)]
    looked = []
    for root in data_roots(cfg):
        for sub in MINI_SUBDIRS:
            if all((root / sub / p).is_file() for p in probes):
                return root / sub
            looked.append(root / sub)
    raise DataNotFoundError(
        "fscil_mini_imagenet", looked,
        "put the 60,000 mini-ImageNet images (100 classes x 600, e.g. built from ILSVRC-2012 with "
        "yaoyao-liu/mini-imagenet-tools) in one flat folder, e.g. "
        f"{Path(cfg.root).expanduser() / MINI_SUBDIRS[0]}/, named as in "
        "kdray/data/splits/fscil/mini_imagenet/{train,test}.csv")


def build_mini_imagenet(cfg: DataConfig) -> FscilData:
    folder = locate_mini_imagenet(cfg)
    files, wnids = mini_csv("train")
    order = list(dict.fromkeys(wnids))  # class id = first appearance in train.csv
    cid = {w: i for i, w in enumerate(order)}
    test_files, test_wnids = mini_csv("test")
    train = FileDataset([folder / f for f in files], [cid[w] for w in wnids], order)
    test = FileDataset([folder / f for f in test_files], [cid[w] for w in test_wnids], order)
    row = {f: i for i, f in enumerate(files)}
    p = PROTOCOLS["fscil_mini_imagenet"]
    sessions = [np.asarray([row[Path(s).name] for s in read_list("mini_imagenet", t)])
                for t in range(p.sessions + 1)]
    return FscilData(p, train, test, sessions)


# ---------------------------------------------------------------------------- CUB-200
def locate_cub200(cfg: DataConfig) -> Path:
    """The ``CUB_200_2011`` folder with its three index files and ``images/``."""
    looked = []
    for root in data_roots(cfg):
        for sub in CUB_SUBDIRS:
            d = root / sub
            if all((d / f).is_file() for f in CUB_FILES) and (d / "images").is_dir():
                return d
            looked.append(d)
    raise DataNotFoundError(
        "fscil_cub200", looked,
        "download CUB_200_2011.tgz (https://data.caltech.edu/records/65de6-vp158) and extract it "
        f"so that {Path(cfg.root).expanduser() / CUB_SUBDIRS[0]}/images.txt exists")


def _table(path: Path) -> dict[int, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            k, v = line.split(maxsplit=1)
            out[int(k)] = v.strip()
    return out


def build_cub200(cfg: DataConfig) -> FscilData:
    d = locate_cub200(cfg)
    paths, labels = _table(d / "images.txt"), _table(d / "image_class_labels.txt")
    is_train = _table(d / "train_test_split.txt")
    names = sorted({p.split("/")[0] for p in paths.values()})  # "001.Black_footed_Albatross", ...
    split = {s: [i for i in sorted(paths) if is_train[i] == str(int(s == "train"))]
             for s in ("train", "test")}
    sets = {s: FileDataset([d / "images" / paths[i] for i in ids],
                           [int(labels[i]) - 1 for i in ids], names) for s, ids in split.items()}
    row = {f"CUB_200_2011/images/{paths[i]}": k for k, i in enumerate(split["train"])}
    p = PROTOCOLS["fscil_cub200"]
    sessions = [np.asarray([row[s] for s in read_list("cub200", t)])
                for t in range(p.sessions + 1)]
    return FscilData(p, sets["train"], sets["test"], sessions)
