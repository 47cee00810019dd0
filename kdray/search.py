"""Ray-free description of search ranges; the runtime layer turns them into Tune domains."""

from __future__ import annotations

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
