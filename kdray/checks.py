"""Validation primitives shared by every layer: ConfigError and the range/choice checks.

The bottom of kdray's layers: it imports nothing from kdray, so configs, methods, data and the
runtime can all raise the same error type, which the command line turns into a short message.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A mistake in what the user gave (a config value, a file, a flag): the command line prints
    its message as one paragraph and exits 2, without a traceback (`--debug` shows it)."""


class ConfigError(UserError, ValueError):
    """A bad configuration value, key or combination."""


def user_error_exit(run: Callable[[], int], debug: bool = False, prog: str = "kdray") -> int:
    """`run()`, with a user mistake (UserError, e.g. ConfigError, DataNotFoundError) turned into
    `error: <message>` on stderr and exit code 2; with `debug` the traceback is printed too."""
    try:
        return run()
    except UserError as err:
        if debug:
            traceback.print_exc()
        hint = "" if debug else f" (add --debug to see where {prog} stopped)"
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2


def check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def check_finite(flat: dict[str, Any]) -> None:
    """Every float of a flattened config (`key -> value`) is finite: NaN or inf in a field
    without a range check would otherwise reach the workers."""
    for key, value in flat.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}={value!r}: NaN and infinity are not valid config values; "
                                  "give a finite number")


def check_choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not valid; choose one of {sorted(map(str, choices))}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} is not a finite number; give a value in "
                          f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high)))
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{key}={value!r} is out of range {lo}{low}, {high}{hi}")
