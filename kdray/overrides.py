"""Config plumbing: typed parsing of `--set` overrides into the config dataclasses.

The dataclasses themselves live in `kdray.config`, which re-exports what callers need.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Union

from kdray.checks import ConfigError
from kdray.registry import method_class


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """["a.b=1", "c=x"] -> {"a.b": "1", "c": "x"}."""
    out: dict[str, str] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------------------- helpers
def to_plain(x):
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_plain(v) for v in x]
    return x


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_dotted(raw: dict, key: str, value: Any, cfg) -> None:
    parts = key.split(".")
    node = raw
    cls: Any = type(cfg)
    for i, p in enumerate(parts):
        if p == "method_cfg" and i == 0:
            cls_ = method_class(raw.get("method", cfg.method), strict=False)
            sub_cls = cls_.Config if cls_ is not None else None
        else:
            sub_cls = None
        names = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
        if p not in names:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"unknown config key {key!r}: {p!r} is not a field of {where}; "
                              f"valid keys there: {sorted(names)}")
        if i == len(parts) - 1:
            tp = _field_types(cls)[p]
            node[p] = _coerce(value, tp, key)
            return
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
        cls = sub_cls or _field_types(cls)[p]
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} has no sub-keys")


def build_dataclass(cls: type, raw: Any, prefix: str):
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {prefix or 'top level'}; "
                          f"valid keys: {sorted(names)}")
    hints = _field_types(cls)
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        tp = hints[k]
        if k == "method_cfg":
            kwargs[k] = v  # resolved in ExperimentConfig.__post_init__
        elif dataclasses.is_dataclass(tp):
            kwargs[k] = build_dataclass(tp, v, key)
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to type `tp` (parsing strings from the command line) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), key)
    scalar = _SCALARS.get(tp)
    return scalar(value, key) if scalar is not None else value


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if type(None) in args:
            return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: {value!r} does not match {tp}")


def _coerce_tuple(value: Any, args: tuple, key: str) -> tuple:
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            value = json.loads(s)
        else:
            value = [v for v in s.strip("()").split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a sequence, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], key) for v in value)
    if len(value) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
    return tuple(_coerce(v, a, key) for v, a in zip(value, args))


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"{key}: expected true/false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected an integer, got {value!r}")


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a number, got {value!r}")


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected a string, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}
