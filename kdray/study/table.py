"""A study's results as Markdown: one row per trial (mean ± 95% CI, the paper's number, the
MLflow run id) and, for rows run with several seeds, an across-seed table. No Ray, no MLflow."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from typing import Any

from kdray.study.spec import BEST_LABEL, Study


def summarize_rows(study: Study, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per trial: label, seed, searched params, metric columns, run id, status.
    `metrics` holds the trial's split-free column values (from `<split>/<name>`, the split it
    evaluated: test for rows, val for searched trials), `split` that split."""
    rows = []
    for t in trials:
        raw = t.get("metrics") or {}
        split = ((t.get("config") or {}).get("eval") or {}).get("split", study.base.eval.split)
        m = {**{k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith(f"{split}/")},
             "epoch": raw.get("epoch")}
        rows.append({"label": t.get("label") or t["name"], "seed": t.get("seed"), "split": split,
                     "params": t.get("params", {}), "metrics": m, "run_id": t.get("run_id"),
                     "status": t.get("status"), "paper": t.get("paper", ""),
                     "epochs": m.get("epoch")})
    return rows


def fmt_ci(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    ci = m.get(key + "_ci95")
    return f"{v:.2f} ± {ci:.2f}" if ci is not None else f"{v:.4g}"


def write_results_md(study: Study, rows: list[dict[str, Any]], path: str, *,
                     header: dict[str, str]) -> str:
    """results/<study>.md: one row per trial, mean ± 95% CI, the paper's number, MLflow run id."""
    cols = list(study.columns) or [(study.metric, study.metric)]
    lines = [f"# {study.name}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| setting | seed | split | " + " | ".join(h for h, _ in cols)
              + " | paper | epochs | status | MLflow run |",
              "|---" * (len(cols) + 7) + "|"]
    for r in rows:
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r["params"].items())
        label = r["label"] + (f" ({params})" if params else "")
        lines.append(f"| {label} | {r['seed']} | {r.get('split', '–')} | "
                     + " | ".join(fmt_ci(r["metrics"], k) for _, k in cols)
                     + f" | {r['paper'] or '–'} | {_short(r['epochs'])} | {r['status']} | "
                     f"`{r['run_id'] or '–'}` |")
    lines += seed_summary(rows, cols)
    lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def seed_summary(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of a second table, mean ± sample std (ddof=1) over the finished seeds of
    each ablation row, when some row has two or more; empty otherwise."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if (not r["params"] or r["label"] == BEST_LABEL) and r["status"] == "finished":
            groups.setdefault(r["label"], []).append(r)
    if max((len(g) for g in groups.values()), default=0) < 2:
        return []
    out = ["", "Across seeds (mean ± sample std over finished seeds):", "",
           "| setting | seeds | " + " | ".join(h for h, _ in cols) + " | paper |",
           "|---" * (len(cols) + 3) + "|"]
    for label, g in groups.items():
        cells = []
        for _, key in cols:
            v = [float(r["metrics"][key]) for r in g if r["metrics"].get(key) is not None]
            if not v:
                cells.append("–")
                continue
            mean = sum(v) / len(v)
            std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
            cells.append(f"{mean:.2f} ± {std:.2f}" if len(v) > 1 else f"{mean:.2f}")
        seeds = ",".join(str(r["seed"]) for r in g)
        out.append(f"| {label} | {seeds} | " + " | ".join(cells) + f" | {g[0]['paper'] or '–'} |")
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def hardware_summary() -> str:
    """Where the study's driver ran, e.g. "2 CPU cores (x86_64), no GPU" (trials may run
    elsewhere)."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpu = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}"


def git_short_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
