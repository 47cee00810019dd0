"""`Study` and `Row`: what a study runs (ablation rows x seeds, a searched space, its budget), as
plain data. No Ray: `kdray.runtime.tune.run_study` runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from kdray.config import ConfigError, ExperimentConfig
from kdray.search import Budget, Choice, Domain

ROW_KEY = "row"
SEED_KEY = "seed"
SELECT_SPLIT = "val"   # searches are scored, stopped and selected on this split only
BEST_LABEL = "best searched (val-selected)"
T = TypeVar("T")
#: a value, or a function of the study's base config giving it (e.g. columns from the protocol)
OfBase = T | Callable[[ExperimentConfig], T]


@dataclass(frozen=True)
class Row:
    """A named setting of an ablation table: dotted-key overrides of the base config."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: str = ""  # the paper's number(s) for this row, printed beside ours


@dataclass(frozen=True)
class Study:
    """What to run. Either `rows` (grid over named settings) or `space` (searched) or both: with
    both, every sampled point is applied on top of the search row (default: the last row).

    Splits: `metric` and the `columns` keys name no split ("top1", "acc_5w1s"); a trial reports
    them as `<split>/<name>` for the split it evaluated. Rows report `base.eval.split` (normally
    test). Searched trials evaluate on val (`search_base`) and are ranked on `val/<metric>`; the
    val-selected best point is then trained again with `seeds` and reported on the rows' split as
    the row `BEST_LABEL`."""

    name: str
    base: ExperimentConfig
    metric: str                     # without split: "top1", "acc_5w1s", "fscil_avg", "AP"
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
    baseline: str = ""              # row the others are compared with (default: the first row)
    compare: tuple[str, ...] = ()   # metric keys given Δ vs the baseline (default: the metric)
    # the paper's claims as (better row, worse row): each gets its own paired Δ in the table
    claims: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"study.mode: {self.mode!r}; choose max or min")
        if self.search not in ("optuna", "random", "grid"):
            raise ConfigError(f"study.search: {self.search!r}; choose optuna, random or grid")
        if self.scheduler not in ("asha", "none"):
            raise ConfigError(f"study.scheduler: {self.scheduler!r}; choose asha or none")
        if self.search == "grid" and self.space:
            raise ConfigError("study.search='grid' takes rows and seeds; use optuna/random for "
                              "space")
        if self.num_samples < 1:
            raise ConfigError("study.num_samples must be >= 1")
        labels = [r.label for r in self.rows]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"study rows need unique labels, got {labels}")
        if BEST_LABEL in labels:
            raise ConfigError(f"study row label {BEST_LABEL!r} is reserved for the searched best")
        for key in (self.metric, *(k for _, k in self.columns)):
            if "/" in key:
                raise ConfigError(f"study metric/column {key!r}: name it without its split (e.g. "
                                  f"{key.split('/')[-1]!r}); trials report <split>/<name>")
        if "eval.split" in self.space or "data.holdout_val" in self.space:
            raise ConfigError("study.space: searched trials always evaluate on val; do not search "
                              "eval.split or data.holdout_val")
        if self.baseline and self.baseline not in labels:
            raise ConfigError(f"study.baseline {self.baseline!r} is not a row; rows: {labels}")
        for pair in self.claims:
            for label in pair:
                if label not in labels:
                    raise ConfigError(f"study.claims: {label!r} is not a row; rows: {labels}")

    def key(self, split: str | None = None, name: str | None = None) -> str:
        """`<split>/<name>`: the reported key of `name` (default: the metric) on `split` (default:
        the rows' split, base.eval.split)."""
        return f"{split or self.base.eval.split}/{name or self.metric}"

    @property
    def select_key(self) -> str:
        """What searches are scored, stopped and selected on: `val/<metric>`."""
        return self.key(SELECT_SPLIT)

    @property
    def baseline_label(self) -> str | None:
        """The row every other row is compared with: `baseline`, else the first row."""
        return self.baseline or (self.rows[0].label if self.rows else None)

    @property
    def compared(self) -> tuple[str, ...]:
        """The metric keys that get a Δ vs the baseline in the results table."""
        return self.compare or (self.metric,)

    @classmethod
    def from_preset(cls, study: str, preset: str, *, method: str, overrides: Mapping[str, Any],
                    rows: Iterable[tuple[str, str, Mapping[str, Any]]], metric: OfBase[str],
                    columns: OfBase[tuple[tuple[str, str], ...]], space: Mapping[str, Domain],
                    budget: Budget, description: OfBase[str] = "",
                    paper: Callable[[str, ExperimentConfig], str] = lambda key, base: "",
                    config_name: str | None = None, mode: str = "max", baseline: str = "",
                    compare: tuple[str, ...] = (), seeds: tuple[int, ...] = (0,),
                    claims: tuple[tuple[str, str], ...] = ()) -> Study:
        """The study `<study>_<preset>` of a preset: base = `method` with the preset's dotted-key
        `overrides` (config name `config_name`, default the study name); `rows` as (label, paper
        key, overrides), the paper column from `paper(key, base)`; `metric`, `columns` and
        `description` as values or functions of the base config; `baseline`, `compare`,
        `claims` (by paper key or label; pairs naming a row the preset lacks are dropped) and
        the preset's default `seeds` (`--seeds` overrides) as on the Study. An empty `space`
        runs the rows only."""
        name = f"{study}_{preset}"
        base = ExperimentConfig(method=method, name=config_name or name).override(dict(overrides))

        def of_base(v):
            return v(base) if callable(v) else v

        rows = tuple(rows)
        label_of = {**{key: label for label, key, _ in rows if key}, **{r[0]: r[0] for r in rows}}
        claims = tuple((label_of[a], label_of[b]) for a, b in claims
                       if a in label_of and b in label_of)
        rows = tuple(Row(label, dict(over), paper(key, base)) for label, key, over in rows)
        return cls(claims=claims, name=name, base=base, metric=of_base(metric), mode=mode, rows=rows,
                   space=dict(space), num_samples=budget.samples, grace_period=budget.grace,
                   reduction_factor=budget.reduction_factor, columns=tuple(of_base(columns)),
                   description=of_base(description), baseline=baseline, compare=tuple(compare),
                   seeds=tuple(seeds))

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

    def trial_epochs(self, params: dict[str, Any]) -> int:
        """The length of the trial with Tune config `params` (a row may set its own
        train.epochs); the base's length when the params do not make a valid config."""
        try:
            return int(self.trial_config(dict(params)).train.epochs)
        except Exception:  # noqa: BLE001 - e.g. keys Tune added: the base's length then
            return self.base.train.epochs

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

    def report_base(self, search_row: str | None = None) -> ExperimentConfig:
        """The base with the search row's overrides (default: the last row, conventionally the
        full method), evaluated on the rows' split: what the val-selected best point is trained
        and reported with."""
        if not self.rows:
            return self.base
        row = self.row(search_row) if search_row else self.rows[-1]
        return self.base.override(row.overrides)

    def search_base(self, search_row: str | None = None) -> ExperimentConfig:
        """The config the search starts from: `report_base` evaluated on val, never test. A dataset
        without a val split of its own, or whose own val is the reported split (imagenet, coco:
        kdray.data.CARVED_VAL), uses the val carved from train, which training then leaves out
        (data.holdout_val)."""
        from kdray.data.registry import CARVED_VAL

        base = self.report_base(search_row)
        return base.override({"eval.split": SELECT_SPLIT,
                              "data.holdout_val": base.data.dataset in CARVED_VAL})

    def stage_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """A stage's config (teacher, phase 1, stage 1: what trials start from or distil from) as
        trained for this study: when the study searches and the stage's dataset carves its val
        from train (CARVED_VAL), the stage leaves the carved images out too (data.holdout_val), so
        searched trials are not scored on images their starting point trained on. Rows then start
        from the same stage."""
        from kdray.data.registry import CARVED_VAL

        if self.space and cfg.data.dataset in CARVED_VAL:
            return cfg.override({"data.holdout_val": True})
        return cfg

    def searched_best(self, trials: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """The best of searched trial records by `select_key` (val), or None. A trial record
        carrying any `test/` metric is refused: the search never sees test numbers."""
        done = []
        for t in trials:
            m = t.get("metrics") or {}
            if any(str(k).startswith("test/") for k in m):
                raise ValueError(f"searched trial {t.get('name')!r} reports test metrics")
            v = m.get(self.select_key)
            if t.get("status") != "error" and v is not None and v == v:  # not NaN
                done.append(t)
        if not done:
            return None
        sign = 1 if self.mode == "max" else -1
        return max(done, key=lambda t: sign * float(t["metrics"][self.select_key]))

    def validate(self, search_row: str | None = None) -> list[ExperimentConfig]:
        """Build every config a trial could get (rows x seeds, and the search base at the space's
        corners) so bad keys or values fail before Ray starts. Returns the configs built."""
        out = []
        for row in self.rows or (None,):
            for seed in self.seeds:
                p = {SEED_KEY: seed, **({ROW_KEY: row.label} if row is not None else {})}
                out.append(self.trial_config(p))
        if self.space:
            for base in (self.search_base(search_row), self.report_base(search_row)):
                for low in (True, False):
                    out.append(base.override({k: _corner(d, low) for k, d in self.space.items()}))
        return out


def with_resources(study: Study, *, workers_per_trial: int | None = None,
                   gpus_per_worker: float | None = None, cpus_per_worker: int | None = None,
                   num_samples: int | None = None, seeds: tuple[int, ...] | None = None) -> Study:
    """The study with command-line resource/sample overrides applied to its base config."""
    over: dict[str, Any] = {}
    if workers_per_trial is not None:
        over["resources.num_workers"] = workers_per_trial
    if gpus_per_worker is not None:
        over["resources.gpus_per_worker"] = gpus_per_worker
    if cpus_per_worker is not None:
        over["resources.cpus_per_worker"] = cpus_per_worker
    s = replace(study, base=study.base.override(over)) if over else study
    if num_samples is not None:
        s = replace(s, num_samples=num_samples)
    if seeds is not None:
        s = replace(s, seeds=tuple(seeds))
    return s


def _corner(d: Domain, low: bool) -> Any:
    if isinstance(d, Choice):
        return d.values[0 if low else -1]
    return d.low if low else d.high


def trial_name(params: dict[str, Any], index: int) -> str:
    """Deterministic, readable trial name: row and seed for grids, the sample index otherwise."""
    parts = []
    if ROW_KEY in params:
        parts.append(str(params[ROW_KEY]))
    parts.append(f"t{index:03d}")
    if SEED_KEY in params:
        parts.append(f"s{params[SEED_KEY]}")
    return "-".join(p.replace(" ", "_").replace("/", "_") for p in parts)
