"""The study's ablation chart: one panel per results column, one bar per setting (mean over its
finished seeds), error bars from the paired Δ vs the baseline (kdray.study.stats, the same
intervals as the results table; a one-seed top-1 row without pairs gets its own 95% CI), the
baseline's mean as a dashed line, the paper's number as a marker where the row has one, and rows
scored on another split than the baseline (val) drawn hollow. No Ray, no MLflow."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from kdray.study.spec import BEST_LABEL, Study
from kdray.study.table import row_delta

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def paper_values(paper: str, n_columns: int) -> list[float | None]:
    """The paper cell's numbers by column: "74.28 / 86.99" -> [74.28, 86.99]; a cell whose count
    of numbers does not match the columns gives no marker."""
    nums = [float(x) for x in _NUMBER.findall(paper or "")]
    return nums if len(nums) == n_columns else [None] * n_columns


def ablation_data(study: Study, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the chart draws, per column: settings (ablation rows and the val-selected re-run,
    finished trials only), their means, error bars (low, high) in the metric's units, the
    baseline's mean, paper values and which settings were scored on another split."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if (not r["params"] or r["label"] == BEST_LABEL) and r["status"] == "finished":
            groups.setdefault(r["label"], []).append(r)
    cols = list(study.columns) or [(study.metric, study.metric)]
    base_label = study.baseline_label
    base = groups.get(base_label or "", [])
    base_split = base[0]["split"] if base else study.base.eval.split
    out: dict[str, Any] = {"settings": list(groups), "baseline": base_label, "columns": []}
    for i, (head, key) in enumerate(cols):
        means, errs, papers = [], [], []
        base_mean = _mean([r["metrics"].get(key) for r in base]) if base else None
        for label, g in groups.items():
            m = _mean([r["metrics"].get(key) for r in g])
            means.append(m)
            err = (None, None)
            d = row_delta(g, base, key) if base and label != base_label else None
            if d is not None and d.low is not None and m is not None and base_mean is not None:
                err = (m - (base_mean + d.low), (base_mean + d.high) - m)
            elif len(g) == 1 and m is not None and _ok(g[0]["metrics"].get(key + "_ci95")):
                ci = float(g[0]["metrics"][key + "_ci95"])
                err = (ci, ci)
            errs.append(err)
            papers.append(paper_values(g[0].get("paper", ""), len(cols))[i])
        out["columns"].append({"header": head, "key": key, "means": means, "errors": errs,
                               "baseline_mean": base_mean, "paper": papers})
    out["other_split"] = [g[0]["split"] != base_split for g in groups.values()]
    out["split"] = base_split
    return out


def plot_ablation(study: Study, rows: list[dict[str, Any]], path: str | Path) -> dict[str, Any]:
    """Write the chart to `path` (PNG); return `ablation_data`."""
    from matplotlib.figure import Figure

    data = ablation_data(study, rows)
    n, cols = len(data["settings"]), data["columns"]
    fig = Figure(figsize=(4.2 * len(cols) + 3.2, 0.45 * max(n, 1) + 1.6))
    axes = fig.subplots(1, len(cols), squeeze=False, sharey=True)[0]
    ys = list(range(n))[::-1]
    for ax, col in zip(axes, cols):
        for y, m, (lo, hi), other, p in zip(ys, col["means"], col["errors"],
                                            data["other_split"], col["paper"]):
            if m is None:
                continue
            face = "white" if other else "#3182bd"
            xerr = [[lo], [hi]] if lo is not None else None
            ax.errorbar(m, y, xerr=xerr, fmt="o", color="#3182bd", markerfacecolor=face,
                        ecolor="k", capsize=3, linewidth=1, markersize=7)
            if p is not None:
                ax.plot(p, y, marker="D", color="#d62728", markersize=6, linestyle="none")
        if col["baseline_mean"] is not None:
            ax.axvline(col["baseline_mean"], color="#636363", linestyle="--", linewidth=1)
        ax.set_title(f"{col['header']} ({data['split']}, %)", fontsize=10)
        ax.set_xlabel(f"{col['key']} (%)")
        ax.set_ylim(-0.7, n - 0.3)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels([_wrap(s) for s in data["settings"]], fontsize=8)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], marker="o", color="#3182bd", linestyle="none",
                     label=f"mean over seeds, {data['split']}")]
    if any(data["other_split"]):
        legend.append(Line2D([], [], marker="o", color="#3182bd", markerfacecolor="white",
                             linestyle="none", label="scored on val"))

    legend.append(Line2D([], [], color="#636363", linestyle="--",
                         label=f"baseline: {data['baseline']}"))
    legend.append(Line2D([], [], color="k", label="paired Δ 95% CI (else the run's CI)"))
    if any(p is not None for c in cols for p in c["paper"]):
        legend.append(Line2D([], [], marker="D", color="#d62728", linestyle="none",
                             label="paper"))
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 3), fontsize=7,
               frameon=False)
    fig.suptitle(f"{study.name}: ablation", fontsize=11)
    fig.tight_layout(rect=(0, 0.12 if n < 6 else 0.07, 1, 0.95))
    fig.savefig(str(path), dpi=100)
    return data


def _wrap(label: str, width: int = 34) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean(values: list[Any]) -> float | None:
    v = [float(x) for x in values if _ok(x)]
    return sum(v) / len(v) if v else None
