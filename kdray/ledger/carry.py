"""What a ledger keeps between rebuilds, so that rebuilding it never drops a result whose MLflow
store is not at hand (a store on another machine, a scratch store since deleted):

- `ledger_runs.jsonl` beside LEDGER.md: every run record the ledger was built from (its split
  metrics, params, commit, wall time, devices). The next `kdray ledger` reads it as one more
  source; a store read now wins for a run found in both.
- lines carried from the previous ledger.csv: a line whose study has no run in any source read
  now is kept as it was (its result columns verbatim), marked [carried] in LEDGER.md. This only
  matters for ledgers written before the runs file existed.
No Ray, no MLflow.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from typing import Any

from kdray.ledger.render import TIERS, Line

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
    """Mark the lines whose study has no run in `runs` but ran in the previous ledger as carried
    from it (result columns as they were); the others are left as built."""
    studies = {r["study"] for r in runs}
    for ln in lines:
        c = ln.cell
        if any(f"{c.study}_{t}" in studies for t in (*TIERS, c.preset)):
            continue
        old = previous.get((c.id, ln.row))
        if old is None or old.get("status", "not run") == "not run":
            continue
        ln.carried, ln.status, ln.compared = old, old["status"], old.get("compared_tier", "")
    return lines
