"""The methods: one package per method, registered by name in `kdray.registry`.

Adding a method = a new package kdray/methods/<name>/ (its Method subclass decorated with
``@register_method("<name>")``) plus one line in the import list below.
"""

from __future__ import annotations

from kdray.methods import (  # noqa: F401 - one line per method: importing it registers it
    ce,
    cskd,
    dkd,
    kd,
    m2sd,
    mkd,
    smkd,
    sskd,
)
from kdray.methods.base import Method
from kdray.registry import METHODS


def build_method(cfg, num_classes: int) -> Method:
    return METHODS[cfg.method](cfg, num_classes=num_classes)


__all__ = ["METHODS", "Method", "build_method"]
