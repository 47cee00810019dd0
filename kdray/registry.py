"""The method registry: each method registers itself here; configs resolve names through it.

It sits at the bottom of kdray's layers so that `kdray.config` can turn ``method="smkd"`` into
the method's Config dataclass without importing the methods (which would run back up the
layers). The built-in methods register when `kdray` is imported (kdray/__init__.py imports
`kdray.methods`); a new method adds one import line to kdray/methods/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdray.checks import check_choice

#: registry name -> Method subclass (filled by `register_method`)
METHODS: dict[str, Any] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_method("smkd")`` adds the class to `METHODS`."""

    def add(cls: type) -> type:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice "
                             f"({METHODS[name].__module__} and {cls.__module__})")
        METHODS[name] = cls
        return cls

    return add


def method_class(name: str, *, strict: bool = True) -> Any:
    """The registered class of method `name`; ConfigError naming the choices if unknown
    (None instead when `strict` is False)."""
    if name not in METHODS:
        if not strict:
            return None
        check_choice("method", name, METHODS)
    return METHODS[name]
