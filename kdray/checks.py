"""Validation primitives shared by every layer: ConfigError and the range/choice checks.

The bottom of kdray's layers: it imports nothing from kdray, so configs, methods, data and the
runtime can all raise the same error type, which the command line turns into a short message.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad configuration value, key or combination."""


def check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def check_choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {sorted(map(str, choices))}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high)))
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r} is out of range {lo}{low}, {high}{hi}")
