"""How a worker's metrics are named in MLflow: step values under `train_step/`, epoch values
under their own names, confidence intervals under `ci/` (docs/runtime.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: few-shot classifiers whose first one is also reported without suffix (kdray.eval.fewshot)
_CLASSIFIERS = ("proto", "logreg", "distlinear")


def step_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Step-level values as MLflow keys: `train/x` -> `train_step/x` (the epoch means keep
    `train/x`), so each key has one kind of value on one axis (the global step)."""
    return {("train_step/" + k[len("train/"):]) if k.startswith("train/") else k: v
            for k, v in metrics.items()}


def epoch_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Per-epoch metrics as MLflow keys: `<key>_ci95` -> `ci/<key>` (a CI is not a curve among
    the metrics), and `<split>/<name>_<classifier>` dropped where it only repeats
    `<split>/<name>` (the first classifier is reported under both names)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        base = k[: -len("_ci95")] if k.endswith("_ci95") else k
        head, _, tail = base.rpartition("_")
        if (tail in _CLASSIFIERS and head in metrics and metrics[head] == metrics[base]
                and base.startswith(("val/", "test/"))):
            continue  # the duplicate of `head`
        out["ci/" + base if base != k else k] = v
    return out
