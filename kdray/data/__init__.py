"""Datasets, transforms, samplers and loaders.

Public API (used by the engine and the runtime): `DATASETS`, `DataNotFoundError`,
`build_dataset`, `check_data`, `num_train_classes`, `build_train_loader`, `set_epoch`,
`build_eval_dataset`.
"""

from kdray.data.base import DataNotFoundError, DatasetSpec, ImageDataset
from kdray.data.loader import build_eval_dataset, build_train_loader, set_epoch
from kdray.data.registry import DATASETS, build_dataset, check_data, num_train_classes

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "DatasetSpec",
    "ImageDataset",
    "build_dataset",
    "build_eval_dataset",
    "build_train_loader",
    "check_data",
    "num_train_classes",
    "set_epoch",
]
