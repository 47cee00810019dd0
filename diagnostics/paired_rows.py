"""Paired Δ between any two rows of a finished few-shot study, beyond the Δ vs baseline that its
table prints: the same episode records (MLflow `eval/episodes.parquet`) and the same
`stats.paired_episode_delta` as the table.

    python diagnostics/paired_rows.py results/smkd_ablation_mini.md sqlite:///mlflow.db \
        test/acc_20w1s "official code: patch + [CLS] impl" "phase 1 only: iBOT continued, compute-matched"

prints `A − B: Δ [95% CI] (pairing)` for each pair A, B given after the key. The per-trial table
(setting, seed, MLflow run) is read from the results file; the runs from the store.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from kdray.runtime.mlflow_store import episode_records, open_store
from kdray.study import stats
from kdray.study.pairing import episode_accuracies
from kdray.study.table import read_trial_rows


def trial_runs(table_md: str) -> dict[str, list[tuple[int, str]]]:
    """{setting: [(seed, run id)]} of the finished trials in a results file's per-trial table."""
    runs: dict[str, list[tuple[int, str]]] = {}
    for r in read_trial_rows(table_md):
        if r.get("status") == "finished":
            runs.setdefault(r["setting"], []).append((int(r["seed"]), r["MLflow run"].strip("`")))
    return runs


def main(argv: list[str]) -> int:
    if len(argv) < 5 or (len(argv) - 3) % 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: paired_rows.py TABLE.md TRACKING_URI KEY A B [A B ...]", file=sys.stderr)
        return 2
    table, uri, key, names = argv[0], argv[1], argv[2], argv[3:]
    runs = trial_runs(table)
    missing = [n for n in names if n not in runs]
    if missing:
        print(f"error: {table}: no finished trials for {missing}; settings: {sorted(runs)}",
              file=sys.stderr)
        return 2
    client = open_store(uri)
    acc = {n: episode_accuracies([{"seed": s, "episodes": episode_records(client, r)}
                                  for s, r in runs[n]], key) for n in set(names)}
    for a, b in zip(names[::2], names[1::2]):
        d = stats.paired_episode_delta(acc[a], acc[b])
        print(f"{a} − {b}: {d.text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
