"""The FSCIL session table (kdray.eval.fscil): its Arrow schema and its accuracy-per-session curve.

`session_table` wraps the session records in a `kdray.eval.table.Table`, so the tracker writes
them as ``eval/sessions.parquet`` and ``eval/sessions.png`` (and under ``eval/epoch_XXX/``).
Pure writers (pyarrow, matplotlib's Agg canvas).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kdray.eval.table import Table

SESSION_SCHEMA = pa.schema([
    ("session", pa.int64()),
    ("seen_classes", pa.int64()),
    ("n_train", pa.int64()),
    ("n_test", pa.int64()),
    ("accuracy", pa.float64()),    # percent, all seen classes
    ("base_acc", pa.float64()),    # percent, base-class test images
    ("novel_acc", pa.float64()),   # percent, novel-class test images (NaN in session 0)
    ("hm", pa.float64()),          # harmonic mean of base_acc and novel_acc
    ("epoch", pa.int64()),
])


def session_table(records: Sequence[dict]) -> Table:
    """The session records as the evaluator's ``"sessions"`` table."""
    return Table(records, to_arrow=sessions_arrow, plot=plot_sessions)


def sessions_arrow(records: Sequence[dict], epoch: int | None = None) -> pa.Table:
    """One row per session (schema `SESSION_SCHEMA`)."""
    cols = {
        "session": [int(r["session"]) for r in records],
        "seen_classes": [int(r["seen_classes"]) for r in records],
        "n_train": [int(r["n_train"]) for r in records],
        "n_test": [int(r["n_test"]) for r in records],
        "accuracy": [float(r["session_acc"]) for r in records],
        "base_acc": [float(r["base_acc"]) for r in records],
        "novel_acc": [float(r["novel_acc"]) for r in records],
        "hm": [float(r["hm"]) for r in records],
        "epoch": [epoch for _ in records],
    }
    return pa.table(cols, schema=SESSION_SCHEMA)


def write_sessions_parquet(records: Sequence[dict], path: str | Path,
                           epoch: int | None = None) -> int:
    """`sessions_arrow` written to `path`; returns the row count."""
    pq.write_table(sessions_arrow(records, epoch), str(path))
    return len(records)


def plot_sessions(records: Sequence[dict], path: str | Path) -> None:
    """Accuracy (all / base / novel classes) against the session index, with Avg and PD."""
    from matplotlib.figure import Figure

    s = np.array([r["session"] for r in records])
    acc = np.array([r["session_acc"] for r in records], dtype=float)
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    ax.plot(s, acc, marker="o", label="all seen classes")
    ax.plot(s, [r["base_acc"] for r in records], marker=".", linestyle="--", label="base")
    ax.plot(s, [r["novel_acc"] for r in records], marker=".", linestyle=":", label="novel")
    ax.set_xlabel("session")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"FSCIL: Avg {acc.mean():.2f}, PD {acc[0] - acc[-1]:.2f}", fontsize=10)
    ax.set_xticks(s)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
