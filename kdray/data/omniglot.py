"""Omniglot (Lake et al., Science 2015) with the Vinyals et al. (2016) few-shot split
(`omniglot`) or Lake et al.'s original background / evaluation split (`omniglot_lake`, see
`lake_classes`).

A class is a character at one of four rotations (0/90/180/270 degrees, counter-clockwise); the
split lists ``splits/omniglot_vinyals/{train,val,test,trainval}.txt`` name the classes as
``<Alphabet>/<characterNN>/rot<deg>`` (4112/688/1692/4800 classes, 20 drawings each).

Two on-disk layouts are read, in ``<root>/omniglot/`` or torchvision's ``<root>/omniglot-py/``:
the official zips unpacked (``images_background/<Alphabet>/<characterNN>/*.png`` and
``images_evaluation/...``), or the lossless .npz conversion ``images_background.npz`` /
``images_evaluation.npz`` (bool ``images`` (chars, 20, 105, 105), True = white background; row i
is character id i + 1, resp. i + 965; ids per alphabet in ``alphabets.csv``). Images are 105x105
grayscale, returned as RGB PIL images (black ink on white).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from kdray.data.base import DataNotFoundError, ImageDataset, data_roots, download, rgb_tensor

if TYPE_CHECKING:
    from torch import Tensor

    from kdray.config import DataConfig

SPLITS = ("train", "val", "test", "trainval")
SPLIT_DIR = Path(__file__).parent / "splits" / "omniglot_vinyals"
SETS = ("images_background", "images_evaluation")
SUBDIRS = ("omniglot", "omniglot-py")
SIDE = 105
# ink covers 7.8 % of the pixels of images_background (white = 1): mean 0.922, std 0.268
STATS = ((0.922, 0.922, 0.922), (0.268, 0.268, 0.268))
_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{}.zip"


def _how(cfg: DataConfig) -> str:
    dest = Path(cfg.root).expanduser() / "omniglot"
    return (f"download {_URL.format(SETS[0])} and {_URL.format(SETS[1])}, then "
            f"`unzip -q {SETS[0]}.zip -d {dest} && unzip -q {SETS[1]}.zip -d {dest}` "
            f"(or copy {SETS[0]}.npz and {SETS[1]}.npz into {dest}/); or run with "
            f"`--set data.download=true` (torchvision downloads them into "
            f"{dest.parent / 'omniglot-py'}/).")


@functools.cache
def split_classes(split: str) -> tuple[str, ...]:
    text = (SPLIT_DIR / f"{split}.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@functools.lru_cache(maxsize=1)
def _npz_rows() -> dict[str, tuple[int, int]]:
    """'<Alphabet>/<characterNN>' -> (set index, row in that set's .npz)."""
    out = {}
    with open(SPLIT_DIR / "alphabets.csv") as f:
        for r in csv.DictReader(f):
            s = SETS.index(f"images_{r['set']}")
            first_row = int(r["first_id"]) - (1 if s == 0 else 965)
            for j in range(int(r["characters"])):
                out[f"{r['alphabet']}/character{j + 1:02d}"] = (s, first_row + j)
    return out


@functools.lru_cache(maxsize=2)
def _packed(path: str) -> np.ndarray:
    """(chars, 20, ceil(105*105/8)) uint8: the .npz images bit-packed (8x less memory)."""
    with np.load(path) as z:
        images = z["images"]
    return np.packbits(images.reshape(*images.shape[:2], -1), axis=-1)


def _find(cfg: DataConfig) -> tuple[str, Path] | list[Path]:
    """('npz' | 'folder', directory), or the list of paths looked in."""
    looked = []
    for root in data_roots(cfg):
        for sub in SUBDIRS:
            d = root / sub
            npz = [d / f"{s}.npz" for s in SETS]
            dirs = [d / s for s in SETS]
            if all(p.is_file() for p in npz):
                return "npz", d
            if all(p.is_dir() for p in dirs):
                return "folder", d
            looked += npz + dirs
    return looked


def _download(cfg: DataConfig) -> None:
    from torchvision.datasets import Omniglot as TVOmniglot

    root = Path(cfg.root).expanduser()

    def fetch() -> None:
        for background in (True, False):
            TVOmniglot(str(root), background=background, download=True)

    dest = root / "omniglot"
    download("omniglot", root, f"fetch {_URL.format(SETS[0])} and {_URL.format(SETS[1])} where "
             f"there is network access and unzip both into {dest}/", fetch)


def locate(cfg: DataConfig, splits: Sequence[str] = ()) -> tuple[str, Path]:
    found = _find(cfg)
    if isinstance(found, list) and cfg.download:
        _download(cfg)
        found = _find(cfg)
    if isinstance(found, list):
        raise DataNotFoundError("omniglot", found, _how(cfg))
    return found


class Omniglot(ImageDataset):
    """One Vinyals split; item i = (character, drawer, rotation) with label = class line index."""

    def __init__(self, kind: str, folder: Path, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        chars = sorted({c.rsplit("/", 1)[0] for c in self.classes})
        slot = {c: i for i, c in enumerate(chars)}
        self._files: list[list[Path]] = []
        if kind == "npz":
            rows = _npz_rows()
            sets = [_packed(str(folder / f"{s}.npz")) for s in SETS]
            self._bits = np.stack([sets[rows[c][0]][rows[c][1]] for c in chars])
            counts = [self._bits.shape[1]] * len(chars)
        else:
            self._bits = None
            self._files = [self._char_files(folder, c) for c in chars]
            counts = [len(f) for f in self._files]
        items, targets = [], []
        for label, name in enumerate(self.classes):
            char, rot = name.rsplit("/", 1)
            k = int(rot.removeprefix("rot")) // 90
            s = slot[char]
            items += [(s, d, k) for d in range(counts[s])]
            targets += [label] * counts[s]
        self._items = np.asarray(items, dtype=np.int64).reshape(-1, 3)
        self.targets = targets

    @staticmethod
    def _char_files(folder: Path, char: str) -> list[Path]:
        dirs = [folder / s / char for s in SETS]
        for d in dirs:
            if d.is_dir():
                return sorted(d.glob("*.png"))
        raise DataNotFoundError("omniglot", dirs, f"the folder layout lacks {char}; unzip the "
                                f"full official zips ({_URL.format('images_background')}, ...)")

    def _gray(self, s: int, d: int) -> np.ndarray:
        if self._bits is not None:
            bits = np.unpackbits(self._bits[s, d])[: SIDE * SIDE].reshape(SIDE, SIDE)
            return bits * np.uint8(255)
        with Image.open(self._files[s][d]) as im:
            return np.asarray(im.convert("L"))

    def _pixels(self, i: int) -> np.ndarray:
        s, d, k = (int(x) for x in self._items[i])
        return np.ascontiguousarray(np.rot90(self._gray(s, d), k))  # counter-clockwise, as PIL

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._pixels(i)).convert("RGB")

    def load_uint8(self, i: int) -> Tensor:
        return rgb_tensor(self._pixels(i))


def build(cfg: DataConfig, split: str) -> Omniglot:
    kind, folder = locate(cfg)
    return Omniglot(kind, folder, split_classes(split))


def num_classes(cfg: DataConfig, split: str) -> int:
    return len(split_classes(split))


# ----------------------------------------------------------- Lake et al.'s original protocol
LAKE_SPLITS = ("train", "val", "test")
#: background alphabets whose characters form the carved `val` split of `omniglot_lake`: every
#: 6th of the 30 (alphabets.csv order), 152 characters
LAKE_VAL_ALPHABETS = ("Blackfoot_(Canadian_Aboriginal_Syllabics)", "Futurama",
                      "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Mkhedruli_(Georgian)",
                      "Tifinagh")


@functools.cache
def lake_classes(split: str, holdout_val: bool = False) -> tuple[str, ...]:
    """Classes of `omniglot_lake`: `train` = the 964 `images_background` characters (Lake et al.
    2015's background set; without the `val` alphabets when `holdout_val`), `test` = the 659
    `images_evaluation` characters, `val` = the characters of LAKE_VAL_ALPHABETS (carved from the
    background set, as kdray carves val elsewhere). Upright drawings only (`rot000`): the
    original protocol has no rotated classes."""
    rows = _npz_rows()
    chars = sorted(rows, key=lambda c: rows[c])
    if split == "test":
        return tuple(f"{c}/rot000" for c in chars if rows[c][0] == 1)
    background = [c for c in chars if rows[c][0] == 0]
    is_val = [c.split("/")[0] in LAKE_VAL_ALPHABETS for c in background]
    if split == "val":
        return tuple(f"{c}/rot000" for c, v in zip(background, is_val) if v)
    return tuple(f"{c}/rot000" for c, v in zip(background, is_val) if not (v and holdout_val))


def build_lake(cfg: DataConfig, split: str) -> Omniglot:
    kind, folder = locate(cfg)
    return Omniglot(kind, folder, lake_classes(split, cfg.holdout_val))


def lake_num_classes(cfg: DataConfig, split: str) -> int:
    return len(lake_classes(split, cfg.holdout_val))
