"""A study's results as Markdown: one row per trial (mean ± 95% CI, the paper's number, the
MLflow run id), then one row per ablation setting over its seeds: mean ± sample std, n, and Δ vs
the study's baseline row with its 95% interval and a significance mark (`kdray.study.stats`).
No Ray, no MLflow: the runtime hands in the trials, few-shot ones with their episode records."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from typing import Any

from kdray.study import stats
from kdray.study.spec import BEST_LABEL, Study

_FEWSHOT = re.compile(r"(?:^|/)acc_(\d+)w(\d+)s(?:_(\w+))?$")  # val/acc_5w1s[_classifier]
N_IMAGES = "n_images"  # evaluated images, logged next to top1 (e.g. val/n_images)


def summarize_rows(study: Study, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per trial: label, seed, searched params, metric columns, run id, status.
    `metrics` holds the trial's split-free column values (from `<split>/<name>`, the split it
    evaluated: test for rows, val for searched trials), `split` that split; few-shot trials also
    carry their episode records and evaluation classifiers."""
    rows = []
    for t in trials:
        raw = t.get("metrics") or {}
        split = ((t.get("config") or {}).get("eval") or {}).get("split", study.base.eval.split)
        m = {**{k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith(f"{split}/")},
             "epoch": raw.get("epoch")}
        classifiers = ((t.get("config") or {}).get("eval") or {}).get("classifiers") or ()
        rows.append({"label": t.get("label") or t["name"], "seed": t.get("seed"), "split": split,
                     "params": t.get("params", {}), "metrics": m, "run_id": t.get("run_id"),
                     "status": t.get("status"), "paper": t.get("paper", ""),
                     "epochs": m.get("epoch"), "episodes": t.get("episodes"),
                     "classifiers": list(classifiers)})
    return rows


def fmt_ci(m: dict[str, Any], key: str) -> str:
    """A trial's metric cell: "v ± ci95" when the evaluator gave one; for top-1 with the number
    of evaluated images, "v [low, high]" (Wilson 95% interval of this single run)."""
    v = m.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    ci = m.get(key + "_ci95")
    if ci is not None:
        return f"{v:.2f} ± {ci:.2f}"
    n = m.get(_n_images_key(key))
    if key.rsplit("/", 1)[-1] == "top1" and n:
        low, high = stats.top1_interval(float(v), int(n))
        return f"{v:.2f} [{low:.2f}, {high:.2f}]"
    return f"{v:.4g}"


def _n_images_key(key: str) -> str:
    return (key.rsplit("/", 1)[0] + "/" if "/" in key else "") + N_IMAGES


def write_results_md(study: Study, rows: list[dict[str, Any]], path: str, *,
                     header: dict[str, str]) -> str:
    """results/<study>.md: one row per trial, mean ± 95% CI, the paper's number, MLflow run id."""
    cols = list(study.columns) or [(study.metric, study.metric)]
    lines = [f"# {study.name}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines.append(f"- ledger: [results/LEDGER.md#{study.name}](LEDGER.md#{study.name})")
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
    if any(fmt_ci(r["metrics"], k).endswith("]") for r in rows for _, k in cols):
        lines += ["", "top-1 of a single run: [95% Wilson interval over its evaluated images]."]
    lines += row_summary(study, rows, cols)
    lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def row_summary(study: Study, rows: list[dict[str, Any]],
                cols: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of the second table, one line per ablation row over its seeds that ran to
    the end (status finished): n, mean ± sample std (ddof=1) of every column, and for each of
    `study.compared` the Δ vs the baseline row with its 95% interval (`kdray.study.stats`).
    Searched trials and unfinished seeds are left out; empty when the study has no finished
    ablation row."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if (not r["params"] or r["label"] == BEST_LABEL) and r["status"] == "finished":
            groups.setdefault(r["label"], []).append(r)
    if not groups:
        return []
    base_label = study.baseline_label
    base = groups.get(base_label or "", [])
    heads = dict((k, h) for h, k in cols)
    compared = [(heads.get(k, k), k) for k in study.compared] if base_label else []
    about = (f"; Δ = row − baseline `{base_label}`, 95% CI, paired per (seed, episode) for "
             f"few-shot accuracy, else per seed (t-interval, none below {stats.MIN_N} seeds); "
             "* = CI excludes 0" if compared else "")
    out = ["", "Per setting over its seeds that ran to the end: mean ± sample std, "
           f"n seeds{about}.", "",
           "| " + " | ".join(["setting", "n", *(h for h, _ in cols),
                              *(f"Δ {h} [95% CI]" for h, _ in compared), "paper"]) + " |",
           "|---" * (len(cols) + len(compared) + 3) + "|"]
    for label, g in groups.items():
        cells = [_mean_std_cell([r["metrics"].get(k) for r in g]) for _, k in cols]
        deltas = ["baseline" if label == base_label else _delta_cell(g, base, k)
                  for _, k in compared]
        out.append(f"| {label} | {len(g)} | " + " | ".join(cells + deltas)
                   + f" | {g[0]['paper'] or '–'} |")
    return out


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _mean_std_cell(values: list[Any]) -> str:
    v = [float(x) for x in values if _finite(x)]
    if not v:
        return "–"
    mean, std, _ = stats.mean_std(v)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def row_delta(group: list[dict[str, Any]], base: list[dict[str, Any]],
              key: str) -> stats.Delta | None:
    """Δ of `key` for a setting's finished trials vs the baseline's: per (seed, episode) when
    `key` is a few-shot accuracy and both sides have episode records, else per seed; None when
    nothing pairs."""
    if _FEWSHOT.search(key):
        a, b = episode_accuracies(group, key), episode_accuracies(base, key)
        if a and b and a.keys() & b.keys():
            return stats.paired_episode_delta(a, b)
    a = {r["seed"]: float(r["metrics"][key]) for r in group if _finite(r["metrics"].get(key))}
    b = {r["seed"]: float(r["metrics"][key]) for r in base if _finite(r["metrics"].get(key))}
    if not a.keys() & b.keys():
        return None
    return stats.paired_seed_delta(a, b)


def episode_accuracies(trials: list[dict[str, Any]], key: str) -> dict[tuple[Any, int], float]:
    """{(seed, episode id): accuracy in percent} of the few-shot metric `key` (e.g.
    val/acc_5w1s: way 5, shot 1, the trial's first classifier; val/acc_5w1s_logreg: that one)
    from the trials' episode records."""
    m = _FEWSHOT.search(key)
    if m is None:
        return {}
    way, shot = int(m.group(1)), int(m.group(2))
    out: dict[tuple[Any, int], float] = {}
    for t in trials:
        recs = [r for r in t.get("episodes") or ()
                if int(r["way"]) == way and int(r["shot"]) == shot]
        clf = m.group(3) or ((t.get("classifiers") or [None])[0]
                             or (recs[0]["classifier"] if recs else None))
        for r in recs:
            if r["classifier"] == clf:
                out[(t["seed"], int(r["episode_id"]))] = 100.0 * float(r["accuracy"])
    return out


def _delta_cell(group: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> str:
    d = row_delta(group, base, key) if base else None
    if d is None:
        return "–"
    return d.text()


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
