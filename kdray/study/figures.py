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

from kdray.study.pairing import row_delta
from kdray.study.spec import Study
from kdray.study.table import finished_groups

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PLAIN = re.compile(r"\s*-?\d+(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)*\s*")
_SESSION = re.compile(r"fscil_s(\d+)$")


def paper_values(paper: str, n_columns: int) -> list[float | None]:
    """The paper cell's numbers by column: "74.28 / 86.99" -> [74.28, 86.99]. Only a cell of bare
    numbers is the same setting as ours; a labelled one ("IN-1k Ti 72.2": another dataset or
    scale) and a cell whose count of numbers does not match the columns give no marker."""
    if not _PLAIN.fullmatch(paper or ""):
        return [None] * n_columns
    nums = [float(x) for x in _NUMBER.findall(paper)]
    return nums if len(nums) == n_columns else [None] * n_columns


def paper_scatter_data(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(setting, column, paper, ours = mean over finished seeds, in %) wherever a row's paper
    cell is the same setting as ours (`paper_values`); empty when there is none. Papers give box
    AP in %, kdray's COCO evaluator a fraction: ours is scaled to % for the comparison."""
    cols = list(study.columns) or [(study.metric, study.metric)]
    scale = 1.0 if unit_of(study) == "%" else 100.0
    out = []
    for label, g in finished_groups(rows).items():
        for (head, key), p in zip(cols, paper_values(g[0].get("paper", ""), len(cols))):
            ours = _mean([r["metrics"].get(key) for r in g])
            if ours is not None:
                ours *= scale
            if p is not None and ours is not None:
                out.append({"setting": label, "column": head, "paper": p, "ours": ours})
    return out


def plot_paper_scatter(study: Study, rows: list[dict[str, Any]], path: str | Path
                       ) -> list[dict[str, Any]]:
    """Paper vs ours, one point per (setting, column) with a paper cell of the same setting, the
    diagonal for reference. Writes nothing and returns [] when no cell matches."""
    data = paper_scatter_data(study, rows)
    if not data:
        return []
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.subplots()
    vals = [d["paper"] for d in data] + [d["ours"] for d in data]
    lo, hi = min(vals) - 2, max(vals) + 2
    ax.plot([lo, hi], [lo, hi], color="#636363", linestyle="--", linewidth=1, label="ours = paper")
    for i, d in enumerate(data):
        ax.plot(d["paper"], d["ours"], "o", color=f"C{i % 10}",
                label=_wrap(f"{d['setting']} ({d['column']})", 40))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("paper (%)")
    ax.set_ylabel(f"ours, mean over seeds, {study.base.eval.split} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{study.name}: paper vs ours (same setting only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return data


def session_data(study: Study, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """FSCIL accuracy per session, mean over each setting's finished seeds: {"sessions": [0..],
    "settings": {label: [acc per session]}}; empty settings when the study has no session
    columns (`fscil_s<t>`)."""
    keys = sorted(((int(m.group(1)), k) for _, k in study.columns
                   if (m := _SESSION.match(k))), key=lambda t: t[0])
    out: dict[str, Any] = {"sessions": [t for t, _ in keys], "settings": {}}
    if not keys:
        return out
    for label, g in finished_groups(rows).items():
        out["settings"][label] = [_mean([r["metrics"].get(k) for r in g]) for _, k in keys]
    return out


def plot_sessions(study: Study, rows: list[dict[str, Any]], path: str | Path) -> dict[str, Any]:
    """Every setting's accuracy over the FSCIL sessions on one plot (mean over seeds). Writes
    nothing when the study has no session columns."""
    data = session_data(study, rows)
    if not data["settings"]:
        return data
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.subplots()
    for label, accs in data["settings"].items():
        pts = [(t, a) for t, a in zip(data["sessions"], accs) if a is not None]
        ax.plot([t for t, _ in pts], [a for _, a in pts], marker="o", markersize=4,
                label=_wrap(label, 40) + (" (baseline)" if label == study.baseline_label else ""))
    ax.set_xticks(data["sessions"])
    ax.set_xlabel("session (0 = base classes)")
    ax.set_ylabel(f"accuracy on all classes seen, {study.base.eval.split} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: accuracy per session (mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return data


def ablation_data(study: Study, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the chart draws, per column: settings (ablation rows and the val-selected re-run,
    finished trials only), their means, error bars (low, high) in the metric's units, the
    baseline's mean, paper values and which settings were scored on another split."""
    groups = finished_groups(rows)
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
    out["unit"] = unit_of(study)
    return out


def unit_of(study: Study) -> str:
    """How the study's metrics read: COCO box AP is a fraction (kdray.eval.coco), the
    classification and few-shot accuracies are percentages."""
    return "in [0, 1]" if study.base.eval.kind == "coco" else "%"


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
        ax.set_title(f"{col['header']} ({data['split']}, {data['unit']})", fontsize=10)
        ax.set_xlabel(f"{col['key']} ({data['unit']})")
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
