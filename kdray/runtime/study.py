"""Studies: ablation rows x seeds (grid) and/or a searched space (Optuna TPE), with ASHA.

Layers: `run_study` (driver: Tuner + searcher + scheduler + MLflow parent run) → `_trial`
(one Tune trial = one Ray Train run, see `kdray.runtime.fit.make_trainer`) → the Train worker.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

from kdray.config import ConfigError, ExperimentConfig
from kdray.search import Choice, Domain, Float, Int

log = logging.getLogger(__name__)

ROW_KEY = "row"
SEED_KEY = "seed"


@dataclass(frozen=True)
class Row:
    """A named setting of an ablation table: dotted-key overrides of the base config."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: str = ""  # the paper's number(s) for this row, printed beside ours


@dataclass(frozen=True)
class Study:
    """What to run. Either `rows` (grid over named settings) or `space` (searched) or both: with
    both, every sampled point is applied on top of each row."""

    name: str
    base: ExperimentConfig
    metric: str
    mode: str = "max"
    rows: tuple[Row, ...] = ()
    space: dict[str, Domain] = field(default_factory=dict)
    search: str = "optuna"          # optuna | random | grid (grid: rows x seeds only)
    num_samples: int = 8            # searched points (ignored for grid)
    seeds: tuple[int, ...] = (0,)
    scheduler: str = "asha"         # asha | none
    grace_period: int = 1           # epochs
    reduction_factor: int = 2
    columns: tuple[tuple[str, str], ...] = ()   # (header, metric key) for the results table
    search_seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"study.mode: {self.mode!r}; choose max or min")
        if self.search not in ("optuna", "random", "grid"):
            raise ConfigError(f"study.search: {self.search!r}; choose optuna, random or grid")
        if self.scheduler not in ("asha", "none"):
            raise ConfigError(f"study.scheduler: {self.scheduler!r}; choose asha or none")
        if self.search == "grid" and self.space:
            raise ConfigError("study.search='grid' takes rows and seeds; use optuna/random for space")
        if self.num_samples < 1:
            raise ConfigError("study.num_samples must be >= 1")
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"study rows need unique labels, got {labels}")

    # -------------------------------------------------------------------- configs
    def trial_config(self, params: dict[str, Any]) -> ExperimentConfig:
        """The ExperimentConfig of one trial from its Tune params."""
        over: dict[str, Any] = {}
        if ROW_KEY in params:
            over.update(self.row(params[ROW_KEY]).overrides)
        over.update({k: v for k, v in params.items() if k not in (ROW_KEY, SEED_KEY)})
        if SEED_KEY in params:
            over["seed"] = int(params[SEED_KEY])
        return self.base.override(over)

    def starting_from(self, key: str, checkpoint: str, note: str) -> Study:
        """This study with every trial starting from a stage's `checkpoint` (config `key`, e.g.
        train.init_from or model.teacher_ckpt) and `note` appended to the description."""
        return replace(self, base=self.base.override({key: checkpoint}),
                       description=f"{self.description} {note}".strip())

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise ConfigError(f"unknown row {label!r}; rows: {[r.label for r in self.rows]}")

    def search_base(self, search_row: str | None = None) -> ExperimentConfig:
        """The config the search starts from: the base with the search row's overrides (default:
        the last row, conventionally the full method)."""
        if not self.rows:
            return self.base
        row = self.row(search_row) if search_row else self.rows[-1]
        return self.base.override(row.overrides)

    def validate(self, search_row: str | None = None) -> list[ExperimentConfig]:
        """Build every config a trial could get (rows x seeds, and the search base at the space's
        corners) so bad keys or values fail before Ray starts. Returns the configs built."""
        out = []
        for row in self.rows or (None,):
            for seed in self.seeds:
                p = {SEED_KEY: seed, **({ROW_KEY: row.label} if row is not None else {})}
                out.append(self.trial_config(p))
        if self.space:
            base = self.search_base(search_row)
            for low in (True, False):
                out.append(base.override({k: _corner(d, low) for k, d in self.space.items()}))
        return out


def _corner(d: Domain, low: bool) -> Any:
    if isinstance(d, Choice):
        return d.values[0 if low else -1]
    return d.low if low else d.high


def to_tune(d: Domain):
    from ray import tune

    if isinstance(d, Choice):
        return tune.choice(list(d.values))
    if isinstance(d, Float):
        return tune.loguniform(d.low, d.high) if d.log else tune.uniform(d.low, d.high)
    if isinstance(d, Int):  # Tune's integer upper bound is exclusive; ours is inclusive
        return tune.lograndint(d.low, d.high + 1) if d.log else tune.randint(d.low, d.high + 1)
    raise TypeError(f"unknown domain {d!r}")


def trial_name(params: dict[str, Any], index: int) -> str:
    """Deterministic, readable trial name: row and seed for grids, the sample index otherwise."""
    parts = []
    if ROW_KEY in params:
        parts.append(str(params[ROW_KEY]))
    parts.append(f"t{index:03d}")
    if SEED_KEY in params:
        parts.append(f"s{params[SEED_KEY]}")
    return "-".join(p.replace(" ", "_").replace("/", "_") for p in parts)


def safe_metric_name(key: str) -> str:
    return key


def summarize_rows(study: Study, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per trial: label, seed, searched params, metric columns, run id, status."""
    rows = []
    for t in trials:
        m = t.get("metrics") or {}
        rows.append({"label": t.get("label") or t["name"], "seed": t.get("seed"),
                     "params": t.get("params", {}), "metrics": m, "run_id": t.get("run_id"),
                     "status": t.get("status"), "paper": t.get("paper", ""),
                     "epochs": m.get("epoch")})
    return rows


def fmt_ci(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    ci = m.get(key + "_ci95")
    return f"{v:.2f} ± {ci:.2f}" if ci is not None else f"{v:.4g}"


def write_results_md(study: Study, rows: list[dict[str, Any]], path: str, *,
                     header: dict[str, str]) -> str:
    """results/<study>.md: one row per trial, mean ± 95% CI, the paper's number, MLflow run id."""
    cols = list(study.columns) or [(study.metric, study.metric)]
    lines = [f"# {study.name}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| setting | seed | " + " | ".join(h for h, _ in cols)
              + " | paper | epochs | status | MLflow run |",
              "|---" * (len(cols) + 6) + "|"]
    for r in rows:
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r["params"].items())
        label = r["label"] + (f" ({params})" if params else "")
        lines.append(f"| {label} | {r['seed']} | "
                     + " | ".join(fmt_ci(r["metrics"], k) for _, k in cols)
                     + f" | {r['paper'] or '–'} | {_short(r['epochs'])} | {r['status']} | "
                     f"`{r['run_id'] or '–'}` |")
    lines += seed_summary(rows, cols)
    lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def seed_summary(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of a second table, mean ± sample std (ddof=1) over the finished seeds of
    each ablation row, when some row has two or more; empty otherwise."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if not r["params"] and r["status"] == "finished":
            groups.setdefault(r["label"], []).append(r)
    if max((len(g) for g in groups.values()), default=0) < 2:
        return []
    out = ["", "Across seeds (mean ± sample std over finished seeds):", "",
           "| setting | seeds | " + " | ".join(h for h, _ in cols) + " | paper |",
           "|---" * (len(cols) + 3) + "|"]
    for label, g in groups.items():
        cells = []
        for _, key in cols:
            v = [float(r["metrics"][key]) for r in g if r["metrics"].get(key) is not None]
            if not v:
                cells.append("–")
                continue
            mean = sum(v) / len(v)
            std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
            cells.append(f"{mean:.2f} ± {std:.2f}" if len(v) > 1 else f"{mean:.2f}")
        seeds = ",".join(str(r["seed"]) for r in g)
        out.append(f"| {label} | {seeds} | " + " | ".join(cells) + f" | {g[0]['paper'] or '–'} |")
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
