"""Ray-free search ranges (written once, in each method's `Config.SEARCH`), the selection a study
searches (`select`, optionally narrowed) and its trial budget; the runtime turns them into Tune."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Float range needs low < high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log-uniform range needs low > 0")

    def contains(self, v: Any) -> bool:
        return isinstance(v, int | float) and self.low <= v <= self.high


@dataclass(frozen=True)
class Int:
    low: int
    high: int  # inclusive
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Int range needs low <= high, got {self.low}, {self.high}")

    def contains(self, v: Any) -> bool:
        return isinstance(v, int) and self.low <= v <= self.high


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __init__(self, values) -> None:
        object.__setattr__(self, "values", tuple(values))
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def contains(self, v: Any) -> bool:
        return v in self.values


Domain = Float | Int | Choice


def inside(narrow: Domain, wide: Domain) -> bool:
    """True when every value `narrow` can draw, `wide` can draw too (same kind and scale)."""
    if isinstance(wide, Choice):
        return isinstance(narrow, Choice) and set(narrow.values) <= set(wide.values)
    return (type(narrow) is type(wide) and narrow.log == wide.log
            and wide.low <= narrow.low and narrow.high <= wide.high)


def select(ranges: Mapping[str, Domain], keys: Iterable[str], *, prefix: str = "",
           narrowed: Mapping[str, Domain] | None = None) -> dict[str, Domain]:
    """A search space from a method's `Config.SEARCH`: `keys` (in order), each possibly narrowed.

    Args:
        ranges: the method's ranges, e.g. `METHODS["cskd"].Config.SEARCH` (written once there).
        keys: the fields to search, in the order the space lists them.
        prefix: prepended to every key of the result (`"method_cfg."` for Config fields).
        narrowed: `{key: domain}` replacing a key's range; it must lie inside `ranges[key]`.

    Raises:
        ValueError: a key (or a narrowed key) not in `ranges`, or a narrowed range outside it.
    """
    keys, narrowed = list(keys), dict(narrowed or {})
    unknown = [k for k in [*keys, *narrowed] if k not in ranges]
    if unknown:
        raise ValueError(f"search keys {unknown} have no range; ranges: {sorted(ranges)}")
    if set(narrowed) - set(keys):
        raise ValueError(f"narrowed keys {sorted(set(narrowed) - set(keys))} are not selected")
    for k, d in narrowed.items():
        if not inside(d, ranges[k]):
            raise ValueError(f"search range of {k}: {d} is not inside {ranges[k]}")
    return {prefix + k: narrowed.get(k, ranges[k]) for k in keys}


@dataclass(frozen=True)
class Budget:
    """How many searched trials a study runs and how ASHA stops them early."""

    samples: int            # searched trials
    grace: int = 1          # ASHA grace period, in epochs
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        if self.samples < 1 or self.grace < 1 or self.reduction_factor < 2:
            raise ValueError(f"budget needs samples >= 1, grace >= 1 and reduction_factor >= 2, "
                             f"got {self}")
