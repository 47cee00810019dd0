"""Artifact files for tracked runs: episode tables, eval summaries, plots and environment info.

Pure writers (pyarrow, matplotlib's Agg canvas, stdlib); nothing here talks to MLflow, so
`kdray.runtime.tracking` can log the files and tests can read them without a tracking store.

An *episode record* is one evaluated few-shot episode as a dict with keys `episode_id`, `way`,
`shot`, `queries` (per class), `class_ids` (list of ints), `classifier` and `accuracy`; `epoch` is
added by the writer. Records may come as a flat list or as `{group: [record, ...]}`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EPISODE_SCHEMA = pa.schema([
    ("episode_id", pa.int64()),
    ("way", pa.int64()),
    ("shot", pa.int64()),
    ("queries", pa.int64()),
    ("class_ids", pa.list_(pa.int64())),
    ("classifier", pa.string()),
    ("accuracy", pa.float64()),
    ("epoch", pa.int64()),
])
REQUIRED_KEYS = ("episode_id", "way", "shot", "classifier", "accuracy")
PACKAGES = ("torch", "torchvision", "timm", "ray", "optuna", "mlflow", "numpy", "pyarrow")


def flatten_records(records: Mapping[str, list[dict]] | Iterable[dict]) -> list[dict]:
    """A flat list of episode records from a list or a `{group: [record, ...]}` mapping."""
    if isinstance(records, Mapping):
        return [r for group in records.values() for r in group]
    return list(records)


def group_key(way: int, shot: int, classifier: str) -> str:
    """Summary key in the metric naming style, e.g. `5w1s_proto`."""
    return f"{int(way)}w{int(shot)}s_{classifier}"


def write_episodes_parquet(records: Mapping[str, list[dict]] | Iterable[dict], path: str | Path,
                           epoch: int | None = None) -> int:
    """Write one row per episode (schema `EPISODE_SCHEMA`) and return the row count.

    Args:
        records: episode records; each needs `REQUIRED_KEYS`, `queries`/`class_ids` may be absent.
        path: output `.parquet` file.
        epoch: stored in every row when given, else each record's own `epoch` (or null).
    """
    rows = flatten_records(records)
    for i, r in enumerate(rows):
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"episode record {i} lacks keys {missing}: {r}")
    cols: dict[str, list] = {
        "episode_id": [int(r["episode_id"]) for r in rows],
        "way": [int(r["way"]) for r in rows],
        "shot": [int(r["shot"]) for r in rows],
        "queries": [None if r.get("queries") is None else int(r["queries"]) for r in rows],
        "class_ids": [[int(c) for c in r.get("class_ids") or ()] for r in rows],
        "classifier": [str(r["classifier"]) for r in rows],
        "accuracy": [float(r["accuracy"]) for r in rows],
        "epoch": [epoch if epoch is not None else r.get("epoch") for r in rows],
    }
    pq.write_table(pa.table(cols, schema=EPISODE_SCHEMA), str(path))
    return len(rows)


def summarize_episodes(records: Mapping[str, list[dict]] | Iterable[dict]) -> dict[str, dict]:
    """Per (way, shot, classifier): mean accuracy and its 95% CI in percent (the unit of the
    `*/acc_*` metrics), and the episode count.

    The CI is 1.96 * std / sqrt(n) with the population std (ddof=0), as in the SMKD/CloserLook
    evaluation code (docs/methods/smkd.md §1.4).

    Returns:
        `{group_key: {"way", "shot", "classifier", "mean", "ci95", "n"}}`, sorted by key.
    """
    groups: dict[tuple[int, int, str], list[float]] = {}
    for r in flatten_records(records):
        key = (int(r["way"]), int(r["shot"]), str(r["classifier"]))
        groups.setdefault(key, []).append(float(r["accuracy"]))
    out = {}
    for (way, shot, clf), accs in sorted(groups.items()):
        a = 100.0 * np.asarray(accs, dtype=np.float64)
        out[group_key(way, shot, clf)] = {
            "way": way, "shot": shot, "classifier": clf, "mean": float(a.mean()),
            "ci95": float(1.96 * a.std() / math.sqrt(a.size)), "n": int(a.size),
        }
    return out


def write_summary_json(records: Mapping[str, list[dict]] | Iterable[dict], path: str | Path, *,
                       epoch: int | None = None, reported: Mapping[str, Any] | None = None) -> dict:
    """Write `{"epoch", "unit": "%", "groups": summarize_episodes(records), "reported"}` and
    return it. `reported` is the evaluator's own summary (its all-reduced metrics, already in
    percent), kept verbatim next to the values recomputed from the records."""
    summary = {"epoch": epoch, "unit": "%", "groups": summarize_episodes(records),
               "reported": dict(reported or {})}
    write_json(summary, path)
    return summary


def _json_default(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, tensors, paths, sets and dataclasses."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars and torch tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def write_json(obj: Any, path: str | Path) -> None:
    """Indented, key-sorted JSON that tolerates numpy/torch values."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.0, 3.0)):
    """A figure with `n` axes in rows of `ncols`; the unused axes are hidden.

    A bare `Figure` renders with the Agg canvas and leaves pyplot's global backend and figure
    list alone, so workers without a display (and threads) can plot safely.
    """
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> list[str]:
    """Per-trial curves against integer epochs, one panel per kind, titled `title` (row, seed,
    split): the training loss terms overlaid in one panel, the learning rate in its own (log
    scale), each evaluated metric with its 95% CI band (percent axes for accuracies). Keys with
    one point are drawn as a marker. Returns the keys drawn."""
    keys = sorted({k for h in history for k in h if k.startswith(("train/", "val/", "test/"))
                   and not k.endswith("_ci95") and any(_finite(x.get(k)) for x in history)})
    losses = [k for k in keys if k.startswith("train/") and k != "train/lr"]
    evals = [k for k in keys if not k.startswith("train/")]
    panels: list[tuple[str, list[str]]] = ([("training loss terms", losses)] if losses else [])
    if "train/lr" in keys:
        panels.append(("learning rate", ["train/lr"]))
    panels += [(k, [k]) for k in evals]
    fig, axes = _grid(max(1, len(panels)))
    for ax, (name, group) in zip(axes, panels):
        for key in group:
            pts = [(int(h.get("epoch", i + 1)), float(h[key]), h.get(f"{key}_ci95"))
                   for i, h in enumerate(history) if _finite(h.get(key))]
            xs = np.array([p[0] for p in pts], dtype=float)
            ys = np.array([p[1] for p in pts], dtype=float)
            ax.plot(xs, ys, marker="o", markersize=3 if len(pts) > 1 else 6,
                    label=key.split("/", 1)[1] if len(group) > 1 else None)
            if pts and all(_finite(p[2]) for p in pts):
                ci = np.array([p[2] for p in pts], dtype=float)
                ax.fill_between(xs, ys - ci, ys + ci, alpha=0.25)
        unit = " (%)" if "acc" in name or "top" in name else ""
        ax.set_title(name + unit, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if name == "learning rate":
            ax.set_yscale("log")
        if len(group) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if not panels:
        axes[0].text(0.5, 0.5, "no train/, val/ or test/ metrics", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return [k for _, group in panels for k in group]


def plot_episode_hist(records: Mapping[str, list[dict]] | Iterable[dict], path: str | Path,
                      title: str = "") -> list[str]:
    """Histogram of episode accuracy in percent, one panel per (way, shot, classifier); one bin
    per value an episode can take (k correct of way x queries), so no comb gaps. Returns the
    groups."""
    groups: dict[str, tuple[list[float], int]] = {}
    for r in flatten_records(records):
        key = group_key(r["way"], r["shot"], r["classifier"])
        accs, n = groups.setdefault(key, ([], 0))
        q = int(r.get("queries") or 0) * int(r["way"])
        groups[key] = (accs + [100.0 * float(r["accuracy"])], max(n, q))
    fig, axes = _grid(max(1, len(groups)))
    for ax, (key, (accs, n_q)) in zip(axes, sorted(groups.items())):
        a = np.asarray(accs, dtype=float)
        step = 100.0 / n_q if 0 < n_q <= 400 else None
        edges = ((np.arange(round(a.min() / step), round(a.max() / step) + 2) - 0.5) * step
                 if step else 20)
        ax.hist(a, bins=edges)
        ax.axvline(a.mean(), color="k", linestyle="--", linewidth=1)
        ax.set_title(f"{key}: mean {a.mean():.2f}% (n={a.size})", fontsize=9)
        ax.set_xlabel("episode accuracy (%)")
        ax.set_ylabel("episodes")
    if not groups:
        axes[0].text(0.5, 0.5, "no episodes", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return sorted(groups)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


def git_sha(repo_dir: str | Path | None = None, timeout: float = 5.0) -> str | None:
    """`git rev-parse HEAD` of the repository holding kdray (None outside git or on failure)."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and sha else None


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_devices() -> list[str]:
    """CUDA device names (empty without torch or without a visible GPU)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def environment_info(extra: Mapping[str, Any] | None = None) -> dict:
    """Versions, git SHA, host and hardware facts for `environment.json`, plus `extra`."""
    affinity = getattr(os, "sched_getaffinity", None)
    info = {
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES},
        "git_sha": git_sha(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(affinity(0)) if affinity else None,
        "cuda_devices": _cuda_devices(),
    }
    info.update(dict(extra or {}))
    return info
