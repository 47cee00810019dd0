"""Method registry: one line per method."""

from __future__ import annotations

from kdray.methods.base import Method
from kdray.methods.ce import CE
from kdray.methods.cskd import CSKD
from kdray.methods.kd import KD
from kdray.methods.smkd import SMKD

METHODS: dict[str, type[Method]] = {
    "ce": CE,
    "cskd": CSKD,
    "kd": KD,
    "smkd": SMKD,
}


def build_method(cfg, num_classes: int) -> Method:
    return METHODS[cfg.method](cfg, num_classes=num_classes)
