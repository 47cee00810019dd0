"""Method registry: one line per method."""

from __future__ import annotations

from kdray.methods.base import Method
from kdray.methods.ce import CE
from kdray.methods.cskd import CSKD
from kdray.methods.kd import KD
from kdray.methods.m2sd import M2SD
from kdray.methods.mkd import MKD
from kdray.methods.smkd import SMKD
from kdray.methods.sskd import SSKD
from kdray.methods.sskd_teacher import SSKDTeacher

METHODS: dict[str, type[Method]] = {
    "ce": CE,
    "cskd": CSKD,
    "kd": KD,
    "m2sd": M2SD,
    "mkd": MKD,
    "smkd": SMKD,
    "sskd": SSKD,
    "sskd_teacher": SSKDTeacher,
}


def build_method(cfg, num_classes: int) -> Method:
    return METHODS[cfg.method](cfg, num_classes=num_classes)
