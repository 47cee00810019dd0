"""The dataset registry and the cheap driver-side checks run before any Ray resource starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from kdray.config import ConfigError, check_choice
from kdray.data import cifar, fscil, imagenet, mini_imagenet, omniglot, synthetic
from kdray.data import coco as detection_data
from kdray.data.base import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    IMAGENET_STATS,
    DatasetSpec,
    ImageDataset,
    holdout_rows,
)

if TYPE_CHECKING:
    from kdray.config import DataConfig, ExperimentConfig


def with_carved_val(build: Callable[[DataConfig, str], ImageDataset]
                    ) -> Callable[[DataConfig, str], ImageDataset]:
    """A builder for a dataset without a val split that adds one carved from `train`
    (`holdout_rows`: a fixed, class-stratified share); `train` leaves it out only with
    data.holdout_val=true. `test` is untouched."""
    def build_fn(cfg: DataConfig, split: str) -> ImageDataset:
        if split not in ("train", "val"):
            return build(cfg, split)
        train = build(cfg, "train")
        val = holdout_rows(train.targets)
        if split == "val":
            return fscil.RowsDataset(train, val)
        if not cfg.holdout_val:
            return train
        return fscil.RowsDataset(train, np.setdiff1d(np.arange(len(train)), val))
    return build_fn


#: datasets whose `val` split is carved from `train` (no val split of their own, or one that is
#: the reported split: imagenet's ILSVRC val and COCO's val2017 are their `test`)
CARVED_VAL = ("cifar10", "cifar100", "imagenet", "omniglot_lake", *detection_data.SPECS,
              *(f"fscil_{n}" for n in ("cifar100", "cifar10", "synthetic", "mini_imagenet",
                                       "cub200")))


def _cifar_spec(name: str, splits: tuple[str, ...], build: Callable) -> DatasetSpec:
    stats = CIFAR10_STATS if name == "cifar10" else CIFAR100_STATS
    return DatasetSpec(name=name, splits=splits, build=build, locate=cifar.locate_for(name),
                       num_classes=lambda cfg, split: cifar.num_classes(name, split),
                       mean=stats[0], std=stats[1], native_size=32)


DATASETS: dict[str, DatasetSpec] = {
    "synthetic_fs": DatasetSpec(
        name="synthetic_fs", splits=("train", "val", "test"), build=synthetic.build,
        locate=synthetic.locate, num_classes=synthetic.num_classes,
        mean=synthetic.STATS[0], std=synthetic.STATS[1], native_size=synthetic.SIZE),
    "omniglot": DatasetSpec(
        name="omniglot", splits=omniglot.SPLITS, build=omniglot.build, locate=omniglot.locate,
        num_classes=omniglot.num_classes, mean=omniglot.STATS[0], std=omniglot.STATS[1],
        native_size=omniglot.SIDE, flip=False),  # a mirrored character is another character
    "omniglot_lake": DatasetSpec(
        name="omniglot_lake", splits=omniglot.LAKE_SPLITS, build=omniglot.build_lake,
        locate=omniglot.locate, num_classes=omniglot.lake_num_classes, mean=omniglot.STATS[0],
        std=omniglot.STATS[1], native_size=omniglot.SIDE, flip=False),
    "cifar10": _cifar_spec("cifar10", ("train", "val", "test"),
                           with_carved_val(cifar.build_cifar10)),
    "cifar100": _cifar_spec("cifar100", ("train", "val", "test"),
                            with_carved_val(cifar.build_cifar100)),
    "cifar_fs": _cifar_spec("cifar_fs", ("train", "val", "test"), cifar.build_cifar_fs),
    "fc100": _cifar_spec("fc100", ("train", "val", "test"), cifar.build_fc100),
    "mini_imagenet": DatasetSpec(
        name="mini_imagenet", splits=mini_imagenet.SPLITS, build=mini_imagenet.build,
        locate=mini_imagenet.locate, num_classes=mini_imagenet.num_classes,
        mean=IMAGENET_STATS[0], std=IMAGENET_STATS[1], native_size=84,
        eval_crop=0.875),  # resize to size / 0.875, centre-crop (SMKD: 256 -> 224)
    "imagenet": DatasetSpec(
        name="imagenet", splits=imagenet.SPLITS, build=with_carved_val(imagenet.build),
        locate=imagenet.locate,
        num_classes=imagenet.num_classes, mean=IMAGENET_STATS[0], std=IMAGENET_STATS[1],
        native_size=224, eval_crop=0.875),  # DeiT: resize 256, centre-crop 224
}
# FSCIL protocols (kdray.data.fscil): splits base / train / test, labels = protocol class ids
_FSCIL_STATS = {"fscil_cifar100": (CIFAR100_STATS, 32, 1.0), "fscil_cifar10": (CIFAR10_STATS, 32, 1.0),
                "fscil_synthetic": (synthetic.STATS, synthetic.SIZE, 1.0),
                "fscil_mini_imagenet": (IMAGENET_STATS, 84, 84 / 92),  # CEC: resize 92, crop 84
                "fscil_cub200": (IMAGENET_STATS, 224, 0.875)}          # CEC: resize 256, crop 224
DATASETS.update({name: DatasetSpec(
    name=name, splits=fscil.SPLITS, build=fscil.build, locate=fscil.locate,
    num_classes=fscil.num_classes, mean=st[0], std=st[1], native_size=size, eval_crop=crop)
    for name, (st, size, crop) in _FSCIL_STATS.items()})


DATASETS.update(detection_data.SPECS)  # coco128, coco: COCO-format detection (MKD)


def get_spec(name: str) -> DatasetSpec:
    check_choice("data.dataset", name, DATASETS)
    return DATASETS[name]


def _check_split(key: str, spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ConfigError(f"{key}: {split!r} is not a split of {spec.name}; "
                          f"choose one of {list(spec.splits)}")


def build_dataset(cfg: DataConfig, split: str, transform: Callable[[Any], Any] | None = None
                  ) -> ImageDataset:
    """One split of `cfg.dataset`, returning ``(transform(image), label)`` (PIL image if None).

    Raises:
        ConfigError: unknown dataset or split.
        DataNotFoundError: files missing (after downloading, where allowed and possible).
    """
    spec = get_spec(cfg.dataset)
    _check_split("split", spec, split)
    ds = spec.build(cfg, split)
    ds.transform = transform
    return ds


def check_data(cfg: ExperimentConfig) -> None:
    """Validate dataset, splits and batch geometry and that the files exist (cheap, no full load).

    With data.download=true, missing downloadable data is fetched here (on the driver).
    """
    d = cfg.data
    spec = get_spec(d.dataset)
    _check_split("data.train_split", spec, d.train_split)
    splits = [d.train_split]
    if cfg.eval.kind != "none":
        _check_split("eval.split", spec, cfg.eval.split)
        splits.append(cfg.eval.split)
        if cfg.eval.split == "val" and d.dataset in CARVED_VAL and not d.holdout_val:
            raise ConfigError(f"eval.split=val: the val split of {d.dataset} is carved from train; "
                              "set data.holdout_val=true so that training leaves it out")
    world = cfg.resources.num_workers
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size={d.batch_size} must be divisible by "
                          f"resources.num_workers={world}")
    if d.class_aware:
        if (d.batch_size // world) % d.class_aware:
            raise ConfigError(f"data.class_aware={d.class_aware} must divide the per-worker batch "
                              f"{d.batch_size // world} (data.batch_size / resources.num_workers)")
        n = spec.num_classes(d, d.train_split)
        if d.batch_size // d.class_aware > n:
            raise ConfigError(f"data.class_aware={d.class_aware}: a batch of {d.batch_size} needs "
                              f"{d.batch_size // d.class_aware} classes, split {d.train_split!r} "
                              f"of {d.dataset} has {n}")
    if cfg.eval.kind == "fewshot":
        n_eval, ways = spec.num_classes(d, cfg.eval.split), max(cfg.eval.all_ways)
        if n_eval < ways:
            raise ConfigError(f"eval.ways/extra_ways: {ways}-way exceeds the {n_eval} classes "
                              f"of split {cfg.eval.split!r} of {d.dataset}")
    if cfg.eval.kind == "fscil":
        fscil.protocol_for(d)  # the FSCIL evaluator needs an FSCIL dataset
    spec.locate(d, splits)


def num_train_classes(cfg: ExperimentConfig) -> int:
    """Number of classes of the training split (the classifier width), without loading images."""
    spec = get_spec(cfg.data.dataset)
    _check_split("data.train_split", spec, cfg.data.train_split)
    return spec.num_classes(cfg.data, cfg.data.train_split)
