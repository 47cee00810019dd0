"""Study presets: plain dotted-key overrides of `ExperimentConfig`, the ablation rows, the papers'
numbers, the searched keys (`SPACE`, selected from the method's `Config.SEARCH`, where the ranges
are written) and the search budget per preset (`BUDGET`), kept out of `studies/` so each study
script stays short. No Ray, no training logic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from kdray.search import Domain, select

#: the project's read-only real data (a checkout's sibling `shared/data`), used by the `mini`
#: presets as their default `data.root`; `--data-root` points elsewhere
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def method_space(method: str, keys: Iterable[str],
                 narrowed: Mapping[str, Domain] | None = None) -> dict[str, Domain]:
    """`method_cfg.<key>` ranges of `method`, read from its `Config.SEARCH` (the one place they are
    written) through the method registry; `narrowed` ranges must lie inside them."""
    from kdray.methods import METHODS

    return select(METHODS[method].Config.SEARCH, keys, prefix="method_cfg.", narrowed=narrowed)
