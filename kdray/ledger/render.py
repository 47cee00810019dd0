"""The ledger from plain run records: one line per (paper cell, targeted row), ours per tier, Δ,
status, compute; rendered as Markdown and CSV, deterministically (sorted, no timestamps).

A run record (made by `kdray.runtime.ledger` from MLflow) is a dict: `run_id`, `study`
(`<study>_<tier>`), `row` (ablation row label), `seed`, `metrics`, `params` (flattened config),
`commit`, `wall_s`, `devices` ({"kind": "GPU"|"CPU", "count": n, "name": str}), `start_time`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kdray.ledger.cells import Cell
from kdray.ledger.flops import Estimate

TIERS = ("smoke", "mini")      # reduced tiers; the cell's own preset is the third
TOLERANCE = 0.5                # points, where the paper gives no std/CI
PREFIXES = ("test/", "val/", "")
STATUSES = ("within", "gap", "other setting", "no paper value", "not run")
# params that name places, not the recipe: left out of the config hash
HASH_SKIP = ("seed", "name", "data.root", "model.teacher_ckpt", "train.init_from")


def metric_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """`test/<name>`, else `val/<name>` (the split prefix is being renamed), else `<name>`."""
    for prefix in PREFIXES:
        v = metrics.get(prefix + name)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return None


def config_hash(params: Mapping[str, Any]) -> str:
    """12 hex digits of the run's recipe: its params without seed, name and paths."""
    keep = {k: str(v) for k, v in params.items() if k not in HASH_SKIP}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def matches(run: Mapping[str, Any], cell: Cell) -> bool:
    """Whether the run trained the cell's setting (its `match` params)."""
    params = run.get("params") or {}
    return all(str(params.get(k)) == str(v) for k, v in cell.match.items())


@dataclass
class TierResult:
    tier: str
    runs: list[dict[str, Any]]          # one per seed (the newest run of each)
    values: list[float]
    same_setting: bool

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        v = self.values
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def text(self) -> str:
        if not self.values:
            return ""
        return _tier_text(self.mean, self.std, self.n, self.same_setting)

    def cost(self) -> str:
        return compute_text(self.runs)


@dataclass
class CarriedTier:
    """One tier of a line as the previous ledger.csv had it (`kdray.ledger.carry`): its study
    tier has no run in any source read now, while the line's other tiers were rebuilt. Its runs
    are not known one by one (the csv lists a line's commits and run ids over all its tiers), so
    they are not listed with the rebuilt ones."""
    tier: str
    mean: float
    std: float | None
    n: int
    same_setting: bool
    compute: str = ""                   # the tier's part of the old compute column
    runs: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        return _tier_text(self.mean, self.std, self.n, self.same_setting) + " [carried]"

    def cost(self) -> str:
        return f"{self.compute} [carried]" if self.compute else "[carried]"


def _tier_text(mean: float, std: float | None, n: int, same_setting: bool) -> str:
    body = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
    return f"{body} (n={n})" + ("" if same_setting else " [other setting]")


@dataclass
class Line:
    cell: Cell
    row: str
    tiers: dict[str, TierResult | CarriedTier] = field(default_factory=dict)
    compared: str = ""                  # the tier the status is about
    delta: float | None = None
    status: str = "not run"
    estimate: Estimate | None = None
    # a line kept as it was from the previous ledger.csv (`kdray.ledger.carry`): its study has no
    # run in any source read now; the csv's result columns, by CSV_COLUMNS name
    carried: dict[str, str] | None = None

    @property
    def anchor(self) -> str:
        return self.cell.study_name


def status_of(paper: float | None, pm: float | None, ours: float | None,
              same_setting: bool) -> str:
    """`within` the paper's ± (or ±`TOLERANCE` points when it gives none), `gap`, `other
    setting` (ours measured another dataset/architecture), `no paper value`, `not run`."""
    if ours is None:
        return "not run"
    if not same_setting:
        return "other setting"
    if paper is None:
        return "no paper value"
    tol = pm if pm is not None else TOLERANCE
    return "within" if abs(ours - paper) <= tol + 1e-9 else "gap"


def _newest_per_seed(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        key = str(r.get("seed"))
        if key not in best or (r.get("start_time", 0), r["run_id"]) > (
                best[key].get("start_time", 0), best[key]["run_id"]):
            best[key] = r
    return [best[k] for k in sorted(best, key=lambda s: (len(s), s))]


def build_lines(cells: Iterable[Cell], runs: list[dict[str, Any]],
                estimate: Callable[[Cell], Estimate | None] | None = None) -> list[Line]:
    """Ledger lines, sorted by study, cell id and row. `estimate(cell)` is asked for cells whose
    own preset has not run (smoke or mini runs may have)."""
    by_study: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_study.setdefault(r["study"], []).append(r)
    lines = []
    for cell in cells:
        for row in cell.rows:
            line = Line(cell, row)
            for tier in (*TIERS, cell.preset):
                pool = [r for r in by_study.get(f"{cell.study}_{tier}", ()) if r["row"] == row]
                if tier == cell.preset:  # a paper preset runs one setting per cell (e.g. a pair)
                    pool = [r for r in pool if matches(r, cell)]
                chosen = [r for r in _newest_per_seed(pool)
                          if metric_value(r["metrics"], cell.metric) is not None]
                if chosen:
                    vals = [metric_value(r["metrics"], cell.metric) for r in chosen]
                    line.tiers[tier] = TierResult(tier, chosen, vals,
                                                  all(matches(r, cell) for r in chosen))
            settle(line)
            if cell.preset not in line.tiers and estimate is not None:
                line.estimate = estimate(cell)
            lines.append(line)
    return sorted(lines, key=lambda x: (x.cell.study, x.cell.id, x.cell.rows.index(x.row)))


def settle(line: Line) -> None:
    """Set the line's compared tier, Δ and status from the fullest tier it has."""
    cell = line.cell
    line.compared, line.delta, line.status = "", None, "not run"
    for tier in (cell.preset, *reversed(TIERS)):
        if tier in line.tiers:
            res = line.tiers[tier]
            line.compared = tier
            if cell.value is not None and res.same_setting:
                line.delta = res.mean - cell.value
            line.status = status_of(cell.value, cell.pm, res.mean, res.same_setting)
            return


def compute_text(runs: Iterable[dict[str, Any]]) -> str:
    """Device-hours of `runs`: wall time x devices, per device kind and name."""
    hours: dict[str, float] = {}
    for r in runs:
        d = r.get("devices") or {}
        kind, name = d.get("kind", "CPU"), d.get("name", "")
        unit = f"GPU-h ({name})" if kind == "GPU" else "CPU-core-h"
        hours[unit] = hours.get(unit, 0.0) + float(r.get("wall_s") or 0.0) / 3600 * int(
            d.get("count", 1))
    return "; ".join(f"{h:.3g} {u}" for u, h in sorted(hours.items()))


def _tier_names(cell: Cell) -> tuple[str, ...]:
    return (*TIERS, cell.preset)


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "" if x is None else format(x, fmt)


def _facts(line: Line) -> tuple[str, str, str, list[str]]:
    """(compute, commits, config hashes, run ids) over every tier's runs."""
    runs = [r for t in _tier_names(line.cell) if t in line.tiers for r in line.tiers[t].runs]
    compute = "; ".join(f"{t}: {line.tiers[t].cost()}"
                        for t in _tier_names(line.cell) if t in line.tiers)
    commits = ",".join(sorted({(r.get("commit") or "?")[:10] for r in runs}))
    hashes = ",".join(sorted({config_hash(r.get("params") or {}) for r in runs}))
    return compute, commits, hashes, [r["run_id"] for r in runs]


CSV_COLUMNS = ("cell", "method", "paper", "table", "paper_row", "column", "paper_value",
               "paper_pm", "paper_pm_kind", "setting", "source", "study", "preset", "row",
               "metric", *(f"{t}_{s}" for t in ("smoke", "mini", "preset")
                           for s in ("mean", "std", "n")),
               "compared_tier", "delta", "status", "compute", "estimate_gpu_hours",
               "estimate", "commits", "config_hashes", "mlflow_run_ids")


def render_csv(lines: list[Line]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for ln in lines:
        c = ln.cell
        if ln.carried is not None:
            w.writerow([*_cell_columns(ln), *(ln.carried.get(k, "") for k in RESULT_COLUMNS)])
            continue
        compute, commits, hashes, ids = _facts(ln)
        tiers = []
        for t in ("smoke", "mini", c.preset):
            res = ln.tiers.get(t)
            tiers += [_num(res.mean, ".4f"), _num(res.std, ".4f"), str(res.n)] if res else ["",
                                                                                          "", "0"]
        est = ln.estimate
        w.writerow([*_cell_columns(ln), *tiers, ln.compared, _num(ln.delta, ".4f"), ln.status,
                    compute, _num(est.gpu_hours if est else None, ".4g"),
                    est.label() if est else "", commits, hashes, ";".join(ids)])
    return buf.getvalue()


RESULT_COLUMNS = CSV_COLUMNS[15:]  # what the runs decide (the first 15: the paper cell and row)


def _cell_columns(ln: Line) -> list[str]:
    c = ln.cell
    return [c.id, c.method, c.paper, c.table, c.row, c.column, _num(c.value, "g"),
            _num(c.pm, "g"), c.pm_kind or "", _setting(c), c.source, c.study, c.preset, ln.row,
            c.metric]


def _setting(c: Cell) -> str:
    return "; ".join(f"{k}: {v}" for k, v in c.setting.items())
