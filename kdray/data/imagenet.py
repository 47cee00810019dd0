"""ImageNet-1k (ILSVRC-2012) in the class-folder layout DeiT and torchvision's ImageFolder use.

Expected under a data root: ``imagenet/train/<wnid>/*.JPEG`` and ``imagenet/val/<wnid>/*.JPEG``
(1000 class folders each; labels are the sorted wnids, as ImageFolder). Nothing is downloaded:
the images need an image-net.org account.

Splits: ``train`` (folder ``train``), ``test`` (folder ``val``: the ILSVRC-2012 val images, the
split the literature reports) and ``val``, carved from ``train`` by the registry
(`kdray.data.registry.with_carved_val`: a fixed 10% of each class) for searches, so that no search
is scored on the reported split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from kdray.data.base import DataNotFoundError, ImageDataset, data_roots

if TYPE_CHECKING:
    from kdray.config import DataConfig

SPLITS = ("train", "val", "test")
#: folder of each split read from disk (`val` is carved from train, see the module docstring)
FOLDERS = {"train": "train", "test": "val"}
NUM_CLASSES = 1000
_EXTS = (".jpeg", ".jpg", ".png")


def _how(cfg: DataConfig) -> str:
    folder = Path(cfg.root).expanduser() / "imagenet"
    return ("download ILSVRC-2012 (train and val) from https://image-net.org/ and unpack it as "
            f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (val sorted into class "
            "folders, e.g. with the widely used valprep.sh)")


def locate(cfg: DataConfig, splits: Sequence[str] = SPLITS) -> Path:
    """The `imagenet` folder that has the folder of every requested split (FOLDERS; the carved
    `val` needs `train`) as a folder of class folders."""
    looked = []
    names = sorted({FOLDERS.get(s, "train") for s in splits or SPLITS})
    for root in data_roots(cfg):
        folder = root / "imagenet"
        if all((folder / s).is_dir() and any(os.scandir(folder / s)) for s in names):
            return folder
        looked += [folder / s for s in names]
    raise DataNotFoundError("imagenet", looked, _how(cfg))


class ImageNet(ImageDataset):
    def __init__(self, folder: Path) -> None:
        self.classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        self.files: list[str] = []
        self.targets = []
        for label, wnid in enumerate(self.classes):
            names = sorted(e.name for e in os.scandir(folder / wnid)
                           if e.name.lower().endswith(_EXTS))
            self.files += [os.path.join(wnid, n) for n in names]
            self.targets += [label] * len(names)
        self.folder = folder

    def load(self, i: int) -> Image.Image:
        with Image.open(self.folder / self.files[i]) as im:
            return im.convert("RGB")


def build(cfg: DataConfig, split: str) -> ImageNet:
    """`train` or `test` (the ILSVRC val folder); the registry adds the carved `val`."""
    ds = ImageNet(locate(cfg, [split]) / FOLDERS[split])
    if len(ds.classes) != NUM_CLASSES:
        raise DataNotFoundError("imagenet", [ds.folder], f"expected {NUM_CLASSES} class folders, "
                                f"found {len(ds.classes)}; " + _how(cfg))
    return ds


def num_classes(cfg: DataConfig, split: str) -> int:
    return NUM_CLASSES
