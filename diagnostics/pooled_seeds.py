"""Paired Δ of a per-seed metric (top-1, FSCIL Avg, box AP) pooled over the seeds of several runs
of the same study, e.g. the committed 3-seed table and a later run of the same preset on new
seeds (`--seeds 3,4,5 --results-dir ...`):

    python diagnostics/pooled_seeds.py top-1 "DeiT hard distillation" "DeiT no distillation" \
        results/cskd_ablation_mini.md results/cskd_mini_seeds345/cskd_ablation_mini.md

reads each table's per-trial rows (finished trials only; the number that starts the COLUMN
cell), refuses a (setting, seed) that two tables both hold, and prints each table's Δ and the
pooled one, with the table's own `stats.paired_seed_delta` (t-interval over seeds). The values
are the tables' rounded ones (2 decimals), which moves a Δ by at most 0.01.
"""

from __future__ import annotations

import re
import sys

from kdray.study import stats
from kdray.study.table import read_trial_rows

_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?")


def per_seed(table_md: str, column: str) -> dict[str, dict[int, float]]:
    """{setting: {seed: value of `column`}} of the finished trials in a results file's per-trial
    table (the number that starts the cell; cells without one, e.g. "–", are left out)."""
    rows = read_trial_rows(table_md)
    if rows and column not in rows[0]:
        raise ValueError(f"{table_md}: no column {column!r}; columns: {list(rows[0])}")
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        m = _NUMBER.match(r[column]) if r.get("status") == "finished" else None
        if m is not None:
            out.setdefault(r["setting"], {})[int(r["seed"])] = float(m.group(0))
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: pooled_seeds.py COLUMN A B TABLE.md [TABLE.md ...]", file=sys.stderr)
        return 2
    column, a, b, tables = argv[0], argv[1], argv[2], argv[3:]
    pooled: dict[str, dict[int, float]] = {a: {}, b: {}}
    try:
        for t in tables:
            rows = per_seed(t, column)
            for name in (a, b):
                if name not in rows:
                    raise ValueError(f"{t}: no finished trials of {name!r}; settings: {sorted(rows)}")
                twice = sorted(set(rows[name]) & set(pooled[name]))
                if twice:
                    raise ValueError(f"{t}: seeds {twice} of {name!r} are in an earlier table too; "
                                     "pool runs on disjoint seeds")
                pooled[name].update(rows[name])
            d = stats.paired_seed_delta(rows[a], rows[b])
            print(f"{t}: seeds {sorted(set(rows[a]) & set(rows[b]))}: {a} − {b}: {d.text()}")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = stats.paired_seed_delta(pooled[a], pooled[b])
    print(f"pooled, seeds {sorted(set(pooled[a]) & set(pooled[b]))}: {a} − {b}: {d.text()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
