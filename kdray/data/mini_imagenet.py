"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (ICLR 2017) split.

Images are read from a flat folder ``<root>/mini_imagenet/images/<filename>`` with the file
names of the shipped CSVs ``splits/mini_imagenet/{train,val,test}.csv`` (``filename,label``;
64/16/20 classes x 600 images). Any image size works (transforms resize); docs/methods/smkd.md §1.3 notes
that SMKD stores them at 480 px rather than 84 px.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from kdray.data.base import DataNotFoundError, ImageDataset, data_roots

if TYPE_CHECKING:
    from kdray.config import DataConfig

SPLITS = ("train", "val", "test")
SPLIT_DIR = Path(__file__).parent / "splits" / "mini_imagenet"
SUBDIR = Path("mini_imagenet") / "images"


def _how(cfg: DataConfig) -> str:
    folder = Path(cfg.root).expanduser() / SUBDIR
    return ("mini-ImageNet images are not redistributable. Build them from ILSVRC-2012 train with "
            "https://github.com/yaoyao-liu/mini-imagenet-tools (`python mini_imagenet_generator.py "
            "--imagenet_dir <ILSVRC2012 train folder> --image_resize 0`, or `--image_resize 84` "
            f"for the classic 84-px set) and put all images in one flat folder {folder}/ named as "
            "in kdray/data/splits/mini_imagenet/*.csv (e.g. n0153282900000005.jpg).")


@functools.cache
def read_split(split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(filenames, wnid labels) of a split CSV."""
    with open(SPLIT_DIR / f"{split}.csv") as f:
        rows = list(csv.DictReader(f))
    return tuple(r["filename"] for r in rows), tuple(r["label"] for r in rows)


def locate(cfg: DataConfig, splits: Sequence[str] = SPLITS) -> Path:
    """The images folder holding the first and last image of every requested split."""
    probes = [name for s in (splits or SPLITS) for name in (read_split(s)[0][0], read_split(s)[0][-1])]
    looked = []
    for root in data_roots(cfg):
        folder = root / SUBDIR
        if all((folder / p).is_file() for p in probes):
            return folder
        looked.append(folder)
    raise DataNotFoundError("mini_imagenet", looked, _how(cfg))


class MiniImageNet(ImageDataset):
    def __init__(self, folder: Path, split: str) -> None:
        files, wnids = read_split(split)
        self.classes = list(dict.fromkeys(wnids))  # CSV order
        index = {w: i for i, w in enumerate(self.classes)}
        self.targets = [index[w] for w in wnids]
        self.folder = folder
        self.files = files

    def load(self, i: int) -> Image.Image:
        with Image.open(self.folder / self.files[i]) as im:
            return im.convert("RGB")


def build(cfg: DataConfig, split: str) -> MiniImageNet:
    return MiniImageNet(locate(cfg, [split]), split)


def num_classes(cfg: DataConfig, split: str) -> int:
    return len(set(read_split(split)[1]))
