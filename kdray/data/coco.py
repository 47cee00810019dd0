"""COCO-format detection data for MKD: the `coco128` and `coco` datasets, loader and collate.

Layout looked for under each data root (``data.root``, then ``KDRAY_DATA_PATH``; see
`kdray.data.base.data_roots`):

- ``coco128/``: ``train2017/*.jpg`` + ``annotations/instances_train2017.json`` (the COCO128 copy
  in ../shared/data). Split ``train`` and the reported split ``test`` are the *same* 128 images
  (as upstream: its val2017 is a byte copy of train2017), which is only good for smoke runs.
- ``coco/``: ``train2017/`` + ``annotations/instances_train2017.json`` (split ``train``) and
  ``val2017/`` + ``annotations/instances_val2017.json`` (split ``test``: val2017, the split the
  literature reports).

Split ``val`` (both datasets) is carved from the training images for searches
(`kdray.data.base.holdout_ids`: a fixed 10%, class-agnostic, chosen by a hash of the image id);
with ``data.holdout_val=true`` ``train`` leaves those images out. ``test`` is never touched.

Geometry: each image is resized (bilinear, aspect ratio kept) so that its short side is
``data.image_size`` unless its long side would then exceed ``round(image_size * 1333 / 800)``, in
which case the long side gets that cap (mmdetection's 1333 x 800 rule, scaled). Boxes are scaled by
the same factor. Training adds a horizontal flip with probability 1/2 (seeded per sample, as the
classification loader). Labels are contiguous 0..K-1 in the order of the json's ``categories``;
``label_to_cat`` maps them back. Crowd boxes and boxes without area are left out of the targets
(the COCO evaluator ignores crowd ground truth anyway). The classification ``transform`` slot of
`ImageDataset` is unused: the geometry is fixed by ``data.image_size``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdray.data import shapes_det
from kdray.data.base import (
    IMAGENET_STATS,
    DataNotFoundError,
    DatasetSpec,
    ImageDataset,
    data_roots,
    holdout_ids,
    mix_seed,
)
from kdray.types import Batch

if TYPE_CHECKING:
    from kdray.config import DataConfig, ExperimentConfig

URLS = {"coco128": "https://github.com/developer0hye/COCO128 (train2017/ + annotations/)",
        "coco": "https://cocodataset.org/#download (train2017.zip, val2017.zip, "
                "annotations_trainval2017.zip)"}
#: (image folder, annotation json) relative to the dataset folder, per split read from disk
#: (`val` is carved from `train`, see the module docstring).
LAYOUT = {"coco128": {"train": ("train2017", "annotations/instances_train2017.json"),
                      "test": ("train2017", "annotations/instances_train2017.json")},
          "coco": {"train": ("train2017", "annotations/instances_train2017.json"),
                   "test": ("val2017", "annotations/instances_val2017.json")}}
SPLITS = ("train", "val", "test")
LONG_RATIO = 1333 / 800
SIZE_DIVISIBLE = 32  # padded batches: a multiple of the largest backbone stride
_FLIP_SALT = 0x666C6970


def split_paths(cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """(image folder, annotation json) of `split` under the first root that has both (the carved
    `val` reads `train`'s)."""
    name, looked = cfg.dataset, []
    folder, ann = LAYOUT[name]["train" if split == "val" else split]
    for root in data_roots(cfg):
        imgs, js = root / name / folder, root / name / ann
        if imgs.is_dir() and js.is_file():
            return imgs, js
        looked += [imgs, js]
    raise DataNotFoundError(name, looked, f"download from {URLS[name]} into <data.root>/{name}/")


def locate(cfg: DataConfig, splits: Sequence[str]) -> None:
    for s in splits:
        split_paths(cfg, s)


@lru_cache(maxsize=8)
def _load_json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def num_classes(cfg: DataConfig, split: str) -> int:
    """Categories in the split's json; COCO's 80 when the files are not there (yet)."""
    try:
        return len(_load_json(str(split_paths(cfg, split)[1]))["categories"])
    except DataNotFoundError:
        return 80


def resized_hw(h: int, w: int, size: int) -> tuple[int, int, float]:
    """(new h, new w, scale) for an h x w image: short side `size`, long side capped."""
    cap = round(size * LONG_RATIO)
    scale = min(size / min(h, w), cap / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale)), scale


class CocoDetection(ImageDataset):
    """One split of a COCO-format dataset.

    Items are ``(image, target)``: image (3, h, w) float in [0, 1] (resized, see module
    docstring); target {"boxes": (N, 4) xyxy float in resized pixels, "labels": (N,) int64
    contiguous, "image_id": int, "scale": float}. `targets` holds one int per image (its first
    label or -1), so the classification samplers and checks work unchanged.

    Args:
        images: image folder.
        ann_file: COCO instances json.
        size: data.image_size.
        train: draw the horizontal flip (needs the sample seed, see `item`).
    """

    def __init__(self, images: Path, ann_file: Path, size: int, *, train: bool = False) -> None:
        self.root, self.size, self.train = Path(images), size, train
        self.coco = _load_json(str(ann_file))
        cats = sorted(c["id"] for c in self.coco["categories"])
        self.label_to_cat = cats
        self.classes = [str(c) for c in cats]
        cat_to_label = {c: i for i, c in enumerate(cats)}
        self.infos = sorted(self.coco["images"], key=lambda im: im["id"])
        anns: dict[int, list[dict]] = {im["id"]: [] for im in self.infos}
        for a in self.coco["annotations"]:
            if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0:
                anns[a["image_id"]].append(a)
        self.boxes = {k: torch.tensor([a["bbox"] for a in v], dtype=torch.float64).view(-1, 4)
                      for k, v in anns.items()}
        self.labels = {k: torch.tensor([cat_to_label[a["category_id"]] for a in v],
                                       dtype=torch.int64) for k, v in anns.items()}
        self.targets = [int(self.labels[im["id"]][0]) if len(self.labels[im["id"]]) else -1
                        for im in self.infos]

    def load(self, i: int) -> Image.Image:
        return Image.open(self.root / self.infos[i]["file_name"]).convert("RGB")

    def item(self, i: int, seed: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Item `i`; in training mode `seed` decides the flip (no flip when None)."""
        img = self.load(i)
        h, w, scale = resized_hw(img.height, img.width, self.size)
        x = torch.from_numpy(_to_array(img.resize((w, h), Image.BILINEAR)))
        image_id = self.infos[i]["id"]
        xywh = self.boxes[image_id] * scale
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        if self.train and seed is not None and mix_seed(seed, _FLIP_SALT) & 1:
            x = x.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        return x, {"boxes": boxes.float(), "labels": self.labels[image_id].clone(),
                   "image_id": image_id, "scale": scale}

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        return self.item(i, seed)

    def subset(self, rows: Sequence[int]) -> CocoDetection:
        """This split restricted to the images at `rows` (annotations and labels kept)."""
        out = object.__new__(CocoDetection)
        out.__dict__.update(self.__dict__)
        out.infos = [self.infos[int(i)] for i in rows]
        out.targets = [self.targets[int(i)] for i in rows]
        return out

    def gt_subset(self, indices: Sequence[int]) -> dict:
        """The COCO dict restricted to the images at `indices` (for partial evaluation)."""
        ids = {self.infos[i]["id"] for i in indices}
        return {"images": [im for im in self.coco["images"] if im["id"] in ids],
                "annotations": [a for a in self.coco["annotations"] if a["image_id"] in ids],
                "categories": self.coco["categories"]}


def _to_array(img: Image.Image):
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def build(cfg: DataConfig, split: str, *, train: bool | None = None,
          paths: Callable[[DataConfig, str], tuple[Path, Path]] = split_paths) -> CocoDetection:
    """Split `train`, `test`, or `val` carved from the training images (`holdout_ids`), which
    `train` leaves out when data.holdout_val is set. `paths` finds the split's (image folder,
    annotation json): on disk by default, generated for `shapes_det`."""
    images, ann = paths(cfg, split)
    ds = CocoDetection(images, ann, cfg.image_size,
                       train=(split == cfg.train_split) if train is None else train)
    if split == "val" or (split == "train" and cfg.holdout_val):
        held = holdout_ids([im["id"] for im in ds.infos])
        rows = held if split == "val" else np.setdiff1d(np.arange(len(ds)), held)
        ds = ds.subset(rows)
    return ds


def collate(items: Sequence[tuple[Tensor, dict]]) -> Batch:
    """Pad images (zeros, bottom/right) to a common size divisible by 32 into a `Batch`.

    Returns:
        Batch(views=[(B, 3, H, W)], extra={"targets": [{"boxes", "labels"}], "image_ids": [..],
        "sizes": [(h, w)] (unpadded), "scales": [..]}).
    """
    hs = [x.shape[-2] for x, _ in items]
    ws = [x.shape[-1] for x, _ in items]
    H = math.ceil(max(hs) / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    W = math.ceil(max(ws) / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    views = torch.stack([F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2])) for x, _ in items])
    return Batch(views=[views], extra={
        "targets": [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in items],
        "image_ids": [int(t["image_id"]) for _, t in items],
        "sizes": [(h, w) for h, w in zip(hs, ws)],
        "scales": [float(t["scale"]) for _, t in items]})


class _Keys(Dataset):
    def __init__(self, base: CocoDetection) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        return self.base[key]


def build_train_loader(cfg: ExperimentConfig, *, rank: int, world: int) -> DataLoader:
    """Detection training loader: kdray's sharded batch sampler (seeded flips), `collate`."""
    from kdray.config import ConfigError
    from kdray.data.samplers import ShardedBatchSampler

    d = cfg.data
    base = SPECS[d.dataset].build(d, d.train_split, train=True)
    sampler = ShardedBatchSampler(len(base), batch_size=d.batch_size, rank=rank, world=world,
                                  seed=cfg.seed)
    if len(sampler) == 0:
        raise ConfigError(f"data.batch_size={d.batch_size}: {d.dataset} split "
                          f"{d.train_split!r} ({len(base)} images) yields no complete batch")
    return DataLoader(_Keys(base), batch_sampler=sampler, collate_fn=collate,
                      num_workers=d.loader_workers)


class DetectionSpec(DatasetSpec):
    """A DatasetSpec whose training loader is `build_train_loader` above (see kdray.data.loader)."""

    train_loader = staticmethod(build_train_loader)


SPECS: dict[str, DatasetSpec] = {
    name: DetectionSpec(name=name, splits=SPLITS, build=build, locate=locate,
                        num_classes=num_classes, mean=IMAGENET_STATS[0], std=IMAGENET_STATS[1],
                        native_size=640)
    for name in LAYOUT}
SPECS["shapes_det"] = DetectionSpec(  # generated on first use, read as any COCO-layout set
    name="shapes_det", splits=SPLITS, build=partial(build, paths=shapes_det.split_paths),
    locate=shapes_det.locate, num_classes=shapes_det.num_classes, mean=IMAGENET_STATS[0],
    std=IMAGENET_STATS[1], native_size=shapes_det.SIZE)
