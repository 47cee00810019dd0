"""`Table`: a named evaluation table (rows as dicts) that says how it is stored and drawn.

An evaluator's `EvalResult.records` maps names to row lists. Every row list is logged as episode
records (`eval/episodes.parquet`, `eval/summary.json`); a `Table` is also written as
`eval/<name>.parquet` (its own Arrow schema) and, when it has a plot, `eval/<name>.png`, so the
tracker logs any table without knowing the task that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pyarrow as pa


class Table(list):
    """Row dicts (a list, so code reading records as rows keeps working) plus `arrow(epoch)`, the
    table to store, and `plot(path)`, its figure (False when it has none)."""

    def __init__(self, rows: Iterable[dict], *,
                 to_arrow: Callable[[Sequence[dict], int | None], pa.Table],
                 plot: Callable[[Sequence[dict], Path], None] | None = None) -> None:
        super().__init__(rows)
        self._to_arrow, self._plot = to_arrow, plot

    def arrow(self, epoch: int | None = None) -> pa.Table:
        return self._to_arrow(self, epoch)

    def plot(self, path: str | Path) -> bool:
        if self._plot is None:
            return False
        self._plot(self, Path(path))
        return True
