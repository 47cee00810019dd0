"""Paper cells: the published numbers kdray's study presets target, one record per table cell,
shipped as `paper_cells.json` beside this module."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

CELLS_FILE = "paper_cells.json"
FIELDS = ("id", "method", "paper", "table", "row", "column", "value", "pm", "pm_kind", "setting",
          "source", "study", "preset", "rows", "metric", "match")
PM_KINDS = (None, "std", "ci95")


@dataclass(frozen=True)
class Cell:
    """One published number and the kdray study rows aimed at it.

    `value` is None where the paper's number was not retrieved; `pm` is the reported ± (kind
    `pm_kind`: "std" or "ci95"), None where none is given. `metric` is the kdray metric name without
    its split prefix (`val/` or `test/`); `match` the run params (dotted keys) a run must have to
    be this cell's setting (dataset, architectures)."""

    id: str
    method: str
    paper: str
    table: str
    row: str
    column: str
    value: float | None
    pm: float | None
    pm_kind: str | None
    setting: dict[str, str]
    source: str
    study: str
    preset: str
    rows: tuple[str, ...]
    metric: str
    match: dict[str, str] = field(default_factory=dict)

    @property
    def study_name(self) -> str:
        """The study that runs this cell's setting: `<study>_<preset>`."""
        return f"{self.study}_{self.preset}"

    @property
    def preset_module(self) -> str:
        """`kdray.presets.<method>` for a study `<method>_ablation`."""
        return "kdray.presets." + self.study.split("_")[0]


def parse_cells(data: dict[str, Any]) -> list[Cell]:
    """Cells from the file's JSON object; ValueError on a missing field or a repeated id."""
    out, seen = [], set()
    for i, rec in enumerate(data["cells"]):
        missing = [k for k in FIELDS if k not in rec]
        if missing:
            raise ValueError(f"paper cell #{i} ({rec.get('id')}) lacks {missing}")
        if rec["id"] in seen:
            raise ValueError(f"paper cell id {rec['id']!r} repeated")
        if rec["pm_kind"] not in PM_KINDS or (rec["pm"] is None) != (rec["pm_kind"] is None):
            raise ValueError(f"paper cell {rec['id']}: pm {rec['pm']!r} / pm_kind "
                             f"{rec['pm_kind']!r}; pm_kind is one of {PM_KINDS[1:]} when pm is set")
        if not rec["rows"]:
            raise ValueError(f"paper cell {rec['id']}: no study row targets it")
        seen.add(rec["id"])
        value = None if rec["value"] is None else float(rec["value"])
        pm = None if rec["pm"] is None else float(rec["pm"])
        out.append(Cell(**{**rec, "value": value, "pm": pm, "rows": tuple(rec["rows"]),
                           "setting": dict(rec["setting"]), "match": dict(rec["match"])}))
    return sorted(out, key=lambda c: c.id)


def load_cells() -> list[Cell]:
    """Every paper cell of the shipped data file, sorted by id."""
    text = resources.files("kdray.ledger").joinpath(CELLS_FILE).read_text(encoding="utf-8")
    return parse_cells(json.loads(text))


def preset_rows(cell: Cell) -> tuple[dict[str, Any], list[str]] | None:
    """(the preset's overrides, its row labels) of the cell's study, or None when the preset
    module is not there (yet). A preset stored as (common, stage, rows-stage) overrides is merged
    into the overrides the rows train with."""
    try:
        mod = importlib.import_module(cell.preset_module)
    except ModuleNotFoundError:
        return None
    preset = mod.PRESETS.get(cell.preset)
    if preset is None:
        raise KeyError(f"{cell.preset_module}.PRESETS has no preset {cell.preset!r} ({cell.id})")
    if isinstance(preset, tuple):
        merged: dict[str, Any] = {}
        for part in (preset[0], preset[-1]):
            merged.update(part)
        preset = merged
    return dict(preset), [label for label, *_ in mod.ROWS]
