"""The methods: one package per method, registered by name in `kdray.registry`.

Adding a method = a new package kdray/methods/<name>/ (its Method subclass decorated with
``@register_method("<name>")``) plus one import line below.
"""

from __future__ import annotations

# One line per method: importing the package registers it.
from kdray.methods import ce, cskd, kd, m2sd, mkd, smkd, sskd  # noqa: E402, F401, I001
from kdray.methods.base import Method
from kdray.registry import METHODS


def build_method(cfg, num_classes: int) -> Method:
    return METHODS[cfg.method](cfg, num_classes=num_classes)


__all__ = ["METHODS", "Method", "build_method"]
