"""FSCIL protocols: class layouts (base classes, ways, shots, sessions) and the shipped CEC lists.

The datasets built on them live in `kdray.data.fscil` (generated and CIFAR protocols) and
`kdray.data.fscil_files` (image-file protocols: mini-ImageNet, CUB-200).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdray.checks import ConfigError
from kdray.data.base import ImageDataset

if TYPE_CHECKING:
    from kdray.config import DataConfig

SPLITS = ("base", "train", "val", "test")  # val: carved from train (kdray.data.fscil)


LIST_DIR = Path(__file__).parent / "splits" / "fscil"


@dataclass(frozen=True)
class Protocol:
    """Class layout of an FSCIL benchmark (see module docstring)."""

    name: str
    num_classes: int
    base_classes: int
    ways: int
    shots: int
    sessions: int  # incremental sessions (the base session not counted)

    def session_classes(self, t: int) -> range:
        """Class ids introduced in session t (0 = base)."""
        if t == 0:
            return range(self.base_classes)
        start = self.base_classes + (t - 1) * self.ways
        return range(start, start + self.ways)

    def seen_classes(self, t: int) -> range:
        """Class ids seen after session t."""
        return range(self.base_classes + t * self.ways)


@dataclass
class FscilData:
    """All images of one protocol: `train`/`test` datasets (protocol labels) and per-session rows.

    Attributes:
        protocol: the class layout.
        train: every training image of every class.
        test: every test image of every class.
        session_rows: session_rows[t] = rows of `train` used in session t.
    """

    protocol: Protocol
    train: ImageDataset
    test: ImageDataset
    session_rows: list[np.ndarray]


def read_list(name: str, session: int) -> list[str]:
    """Lines of the shipped CEC list ``splits/fscil/<name>/session_<session+1>.txt``."""
    text = (LIST_DIR / name / f"session_{session + 1}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def synthetic_protocol(num_classes: int) -> Protocol:
    """60 % base classes, 5-way 5-shot sessions over the rest (100 classes: 60 + 8 x 5)."""
    base = int(round(0.6 * num_classes))
    ways = min(5, num_classes - base)
    return Protocol("fscil_synthetic", base + ways * ((num_classes - base) // ways), base, ways,
                    5, (num_classes - base) // ways)


PROTOCOLS: dict[str, Protocol] = {
    "fscil_cifar100": Protocol("fscil_cifar100", 100, 60, 5, 5, 8),
    "fscil_mini_imagenet": Protocol("fscil_mini_imagenet", 100, 60, 5, 5, 8),
    "fscil_cub200": Protocol("fscil_cub200", 200, 100, 10, 5, 10),
    "fscil_synthetic": synthetic_protocol(100),
    "fscil_cifar10": Protocol("fscil_cifar10", 10, 6, 2, 5, 2),
}


def protocol_for(cfg: DataConfig) -> Protocol:
    """The protocol of ``cfg.dataset`` (the synthetic one depends on data.synthetic_classes)."""
    if cfg.dataset not in PROTOCOLS:
        raise ConfigError(f"data.dataset={cfg.dataset!r} is not an FSCIL dataset; choose one of "
                          f"{sorted(PROTOCOLS)}")
    if cfg.dataset == "fscil_synthetic":
        return synthetic_protocol(cfg.synthetic_classes)
    return PROTOCOLS[cfg.dataset]
