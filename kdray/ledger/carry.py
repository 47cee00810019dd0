"""What a ledger keeps between rebuilds, so that rebuilding it never drops a result whose MLflow
store is not at hand (a store on another machine, a scratch store since deleted):

- `ledger_runs.jsonl` beside LEDGER.md: every run record the ledger was built from (its split
  metrics, params, commit, wall time, devices). The next `kdray ledger` reads it as one more
  source; a store read now wins for a run found in both.
- lines carried from the previous ledger.csv: a line whose study has no run in any source read
  now is kept as it was (its result columns verbatim), marked [carried] in LEDGER.md. A line
  whose study ran in some tiers now keeps the others (say its smoke tier, when only the mini
  study was re-run) as the csv had them: mean, std, n and that tier's compute, marked [carried].
  This only matters for runs recorded before the runs file existed.
No Ray, no MLflow.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from typing import Any

from kdray.ledger.render import CarriedTier, Line, _tier_names, settle

RUNS_FILE = "ledger_runs.jsonl"
_KEEP = ("test/", "val/")  # the split metrics the ledger reads (metric_value), and unprefixed ones


def slim(record: dict[str, Any]) -> dict[str, Any]:
    """A run record with only the metrics the ledger can read (split-prefixed or unprefixed)."""
    metrics = {k: v for k, v in record.get("metrics", {}).items()
               if k.startswith(_KEEP) or "/" not in k}
    return {**record, "metrics": metrics}


def write_runs(path: str, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in sorted(records, key=lambda r: (r["study"], r["row"], str(r["seed"]),
                                                r["run_id"])):
            f.write(json.dumps(slim(r), sort_keys=True) + "\n")


def read_runs(path: str) -> list[dict[str, Any]]:
    """The run records of a previous ledger (none when the file does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_previous(csv_path: str) -> dict[tuple[str, str], dict[str, str]]:
    """{(cell id, row): csv row} of a previous ledger.csv (empty when there is none)."""
    if not os.path.isfile(csv_path):
        return {}
    with open(csv_path, encoding="utf-8", newline="") as f:
        return {(r["cell"], r["row"]): r for r in csv.DictReader(f)}


def carry(lines: list[Line], runs: list[dict[str, Any]],
          previous: dict[tuple[str, str], dict[str, str]]) -> list[Line]:
    """Carry from the previous ledger what `runs` no longer hold: a whole line when its study
    has no run in any tier, else each tier of the line whose study tier has no run (then the
    line's status is settled again over its tiers); the others are left as built."""
    studies = {r["study"] for r in runs}
    for ln in lines:
        c = ln.cell
        old = previous.get((c.id, ln.row))
        if old is None or old.get("status", "not run") == "not run":
            continue
        columns = (("smoke", "smoke"), ("mini", "mini"), ("preset", c.preset))
        ran = {tier for _, tier in columns if f"{c.study}_{tier}" in studies}
        if not ran:
            ln.carried, ln.status, ln.compared = old, old["status"], old.get("compared_tier", "")
            continue
        # the csv keeps no per-tier setting flag: the old line's status tells it
        same = old.get("status") in ("within", "gap", "no paper value")
        for col, tier in columns:
            n, mean, std = int(float(old.get(f"{col}_n") or 0)), old.get(f"{col}_mean"), old.get(
                f"{col}_std")
            if tier in ran or tier in ln.tiers or n <= 0 or not mean:
                continue
            ln.tiers[tier] = CarriedTier(tier, float(mean), float(std) if std else None, n, same,
                                         tier_compute(old.get("compute", ""), tier,
                                                      _tier_names(c)))
            if tier == c.preset:
                ln.estimate = None
        settle(ln)
    return lines


def tier_compute(compute: str, tier: str, tiers: Iterable[str]) -> str:
    """`tier`'s part of a ledger's compute column ("smoke: 0.01 CPU-core-h; mini: 0.2
    CPU-core-h; 0.1 GPU-h (A100)": a tier's part runs to the next tier's name)."""
    parts: dict[str, list[str]] = {}
    current = None
    for piece in compute.split("; "):
        name, sep, rest = piece.partition(": ")
        if sep and name in tiers:
            current = name
            parts[current] = [rest]
        elif current is not None:
            parts[current].append(piece)
    # a tier carried before says so in its part: the mark is rendered, not stored
    return "; ".join(parts.get(tier, [])).removesuffix(" [carried]")
