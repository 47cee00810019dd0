"""Few-shot class-incremental learning (FSCIL) protocols and their datasets.

A protocol orders its classes so that the base session holds classes ``0 .. base-1`` and
incremental session ``t`` (1-based) adds classes ``base + (t-1)·ways .. base + t·ways - 1``, each
with ``shots`` training images. Labels of every FSCIL dataset are these protocol class ids.

| name (data.dataset)   | classes | base | sessions x ways x shots | session images |
|-----------------------|---------|------|-------------------------|----------------|
| fscil_cifar100        | 100     | 60   | 8 x 5 x 5               | CEC index lists (train-array indices) |
| fscil_mini_imagenet   | 100     | 60   | 8 x 5 x 5               | CEC index lists (file names) |
| fscil_cub200          | 200     | 100  | 10 x 10 x 5             | CEC index lists (relative paths) |
| fscil_synthetic       | 100 (1) | 60   | 8 x 5 x 5 (1)           | generated: seeded shot choice |
| fscil_cifar10         | 10      | 6    | 2 x 2 x 5               | generated: seeded shot choice |

(1) synthetic_fs with ``data.synthetic_classes`` classes: base = 60 %, ways = 5, sessions as many
as fit; each class's last ``per_class // 6`` images are its test images.
The CEC lists ship in ``splits/fscil`` (see its PROVENANCE.md). Splits of every FSCIL dataset:
``base`` (training images of the base session: what stage-1/2 training sees), ``train`` (all
training images), ``val`` (carved from ``train``: a fixed HOLDOUT_FRACTION of each class's
training images that no incremental session uses; see ``carved_val_rows``) and ``test`` (test
images of all classes). With ``data.holdout_val`` the val rows leave ``train``, ``base`` and the
base session's prototypes; evaluating on ``val`` requires it. Session data: ``fscil_data(cfg)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kdray.config import ConfigError
from kdray.data import cifar, fscil_files, synthetic
from kdray.data.base import ArrayDataset, ImageDataset, holdout_rows, mix_seed
from kdray.data.fscil_protocol import (  # noqa: F401 - re-exported
    LIST_DIR,
    PROTOCOLS,
    SPLITS,
    FscilData,
    Protocol,
    protocol_for,
    read_list,
    synthetic_protocol,
)

if TYPE_CHECKING:
    from kdray.config import DataConfig

_SHOT_SALT = 0x73686F74  # seeds the shot choice of the generated protocols


def choose_shots(labels: np.ndarray, classes: Sequence[int], shots: int, seed: int) -> np.ndarray:
    """`shots` rows per class, a fixed seeded choice (sorted by class, then row)."""
    out = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if len(rows) < shots:
            raise ConfigError(f"FSCIL: class {c} has {len(rows)} training images, needs {shots}")
        rng = np.random.default_rng(mix_seed(seed, c, _SHOT_SALT))
        out.append(np.sort(rng.choice(rows, shots, replace=False)))
    return np.concatenate(out)


def _generated_rows(p: Protocol, labels: np.ndarray) -> list[np.ndarray]:
    base = [np.flatnonzero(labels < p.base_classes)]
    return base + [choose_shots(labels, p.session_classes(t), p.shots, 0)
                   for t in range(1, p.sessions + 1)]


# ---------------------------------------------------------------------------- builders
def _build_cifar100(cfg: DataConfig) -> FscilData:
    d = cifar.read_cifar100(str(cifar.locate(cfg, "cifar100")[1]))
    train_rows = np.flatnonzero(d["is_train"])  # train-array index i = row i (train first)
    test_rows = np.flatnonzero(~d["is_train"])
    train = ArrayDataset(d["images"], train_rows, d["fine"][train_rows], d["fine_names"])
    test = ArrayDataset(d["images"], test_rows, d["fine"][test_rows], d["fine_names"])
    sessions = [np.asarray([int(s) for s in read_list("cifar100", t)], dtype=np.int64)
                for t in range(PROTOCOLS["fscil_cifar100"].sessions + 1)]
    return FscilData(PROTOCOLS["fscil_cifar100"], train, test, sessions)


def _build_cifar10(cfg: DataConfig) -> FscilData:
    train, test = cifar.build_cifar10(cfg, "train"), cifar.build_cifar10(cfg, "test")
    p = PROTOCOLS["fscil_cifar10"]
    return FscilData(p, train, test, _generated_rows(p, np.asarray(train.targets)))


def _build_synthetic(cfg: DataConfig) -> FscilData:
    images, labels = synthetic.load_arrays(cfg)
    p = synthetic_protocol(cfg.synthetic_classes)
    per = cfg.synthetic_per_class
    n_test = max(1, per // 6)
    if per - n_test < p.shots:
        raise ConfigError(f"fscil_synthetic: data.synthetic_per_class={per} leaves fewer than "
                          f"{p.shots} training images per class")
    pos = np.arange(len(labels)) % per  # images are stored class by class
    keep = labels < p.num_classes
    names = synthetic.class_names(synthetic.class_table(cfg.synthetic_classes))
    tr, te = np.flatnonzero(keep & (pos < per - n_test)), np.flatnonzero(keep & (pos >= per - n_test))
    train = ArrayDataset(images, tr, labels[tr], names[:p.num_classes])
    test = ArrayDataset(images, te, labels[te], names[:p.num_classes])
    return FscilData(p, train, test, _generated_rows(p, labels[tr]))


@functools.lru_cache(maxsize=4)
def fscil_data(cfg: DataConfig) -> FscilData:
    """Images and session rows of ``cfg.dataset``; raises DataNotFoundError naming the paths."""

    builders = {"fscil_cifar100": _build_cifar100, "fscil_cifar10": _build_cifar10,
                "fscil_synthetic": _build_synthetic,
                "fscil_mini_imagenet": fscil_files.build_mini_imagenet,
                "fscil_cub200": fscil_files.build_cub200}
    protocol_for(cfg)
    data = builders[cfg.dataset](cfg)
    if not cfg.holdout_val:
        return data
    keep = np.setdiff1d(data.session_rows[0], carved_val_rows(data))
    return FscilData(data.protocol, data.train, data.test, [keep, *data.session_rows[1:]])


def carved_val_rows(data: FscilData) -> np.ndarray:
    """Rows of ``data.train`` forming the carved ``val`` split: `holdout_rows` over the training
    images no incremental session uses (the few shots stay training images). Depends only on the
    labels and the session lists, so it is the same with or without ``data.holdout_val``."""
    novel = [np.asarray(r, dtype=np.int64) for r in data.session_rows[1:]]
    used = np.concatenate(novel) if novel else np.zeros(0, dtype=np.int64)
    return holdout_rows(data.train.targets, np.setdiff1d(np.arange(len(data.train)), used))


class RowsDataset(ImageDataset):
    """Rows of another ImageDataset (labels kept); used for sessions and the base split. Its
    `classes` are the parent's, so a split holds images of only some of them by design
    (`partial_classes`: the base split has no session class)."""

    partial_classes = True

    def __init__(self, parent: ImageDataset, rows: np.ndarray) -> None:
        self.parent, self.rows = parent, np.asarray(rows, dtype=np.int64)
        self.targets = [parent.targets[int(r)] for r in self.rows]
        self.classes = parent.classes

    def load(self, i: int):
        return self.parent.load(int(self.rows[i]))

    def load_uint8(self, i: int):
        return self.parent.load_uint8(int(self.rows[i]))


def build(cfg: DataConfig, split: str) -> ImageDataset:
    """Split ``base`` | ``train`` | ``val`` | ``test`` of an FSCIL dataset (protocol class ids as
    labels); with ``cfg.holdout_val`` the val rows are left out of ``base`` and ``train``."""
    data = fscil_data(cfg)
    if split == "base":
        return RowsDataset(data.train, data.session_rows[0])
    if split == "val":
        return RowsDataset(data.train, carved_val_rows(data))
    if split == "train":
        rows = np.arange(len(data.train))
        if cfg.holdout_val:
            rows = np.setdiff1d(rows, carved_val_rows(data))
        return RowsDataset(data.train, rows)
    return RowsDataset(data.test, np.arange(len(data.test)))


def locate(cfg: DataConfig, splits: Sequence[str] = SPLITS) -> None:

    protocol_for(cfg)
    if cfg.dataset in ("fscil_cifar100", "fscil_cifar10"):
        cifar.locate(cfg, cfg.dataset.removeprefix("fscil_"))
    elif cfg.dataset == "fscil_mini_imagenet":
        fscil_files.locate_mini_imagenet(cfg)
    elif cfg.dataset == "fscil_cub200":
        fscil_files.locate_cub200(cfg)


def num_classes(cfg: DataConfig, split: str) -> int:
    p = protocol_for(cfg)
    return p.base_classes if split == "base" else p.num_classes
