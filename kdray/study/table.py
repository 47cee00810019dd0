"""A study's results as Markdown: one row per trial (mean ± 95% CI, the paper's number, the
MLflow run id), then one row per ablation setting over its seeds: mean ± sample std, n, and Δ vs
the study's baseline row with its 95% interval and a significance mark (`kdray.study.stats`).
No Ray, no MLflow: the runtime hands in the trials, few-shot ones with their episode records."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from typing import Any

from kdray.modules.health import collapse_flag
from kdray.study import stats
from kdray.study.describe import paragraph
from kdray.study.pairing import finite as _finite
from kdray.study.pairing import row_delta
from kdray.study.spec import BEST_LABEL, Study

N_IMAGES = "n_images"  # evaluated images, logged next to top1 (e.g. val/n_images)
CARD_TOLERANCE = 1.0  # top-1 points a teacher's measured accuracy may differ from its card's
CHECKS = (("health", "health"), ("teacher", "teacher"))  # (column, row key) of the health checks


def summarize_rows(study: Study, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per trial: label, seed, searched params, metric columns, run id, status.
    `metrics` holds the trial's split-free column values (from `<split>/<name>`, the split it
    evaluated: test for rows, val for searched trials), `split` that split; few-shot trials also
    carry their episode records and evaluation classifiers. `health` is the collapse verdict of a
    self-distillation target from the final train/ metrics, `teacher` the classifier teacher's
    cell (`teacher_cell`); both '' for methods without one."""
    rows = []
    for t in trials:
        raw = t.get("metrics") or {}
        split = ((t.get("config") or {}).get("eval") or {}).get("split", study.base.eval.split)
        m = {**{k.split("/", 1)[1]: v for k, v in raw.items() if k.startswith(f"{split}/")},
             "epoch": raw.get("epoch")}
        classifiers = ((t.get("config") or {}).get("eval") or {}).get("classifiers") or ()
        rows.append({"label": t.get("label") or t["name"], "seed": t.get("seed"), "split": split,
                     "params": t.get("params", {}), "metrics": m, "run_id": t.get("run_id"),
                     "status": t.get("status"), "error": t.get("error"),
                     "paper": t.get("paper", ""),
                     "epochs": m.get("epoch"), "episodes": t.get("episodes"),
                     "classifiers": list(classifiers), "health": collapse_flag(raw),
                     "teacher": teacher_cell(m)})
    return rows


def teacher_cell(m: dict[str, Any]) -> str:
    """A classifier teacher's checks from a trial's split-free metrics: its top-1 on the split
    (measured once, at the first evaluation; the teacher is frozen), its registry card's top-1 with "!" when they differ by
    more than CARD_TOLERANCE points, and the teacher-student agreement of the final evaluation,
    e.g. "teacher 48.9% (card 61.0%!), agree 73.1%"; '' without a classifier teacher."""
    t = m.get("teacher_top1")
    if not _finite(t):
        return ""
    cell = f"teacher {t:.1f}%"
    card = m.get("teacher_card_top1")
    if _finite(card):
        cell += f" (card {card:.1f}%{'!' if abs(t - card) > CARD_TOLERANCE else ''})"
    agree = m.get("agreement")
    return cell + (f", agree {agree:.1f}%" if _finite(agree) else "")


def _checks(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The health-check columns some row has a value for."""
    return [(h, k) for h, k in CHECKS if any(r.get(k) for r in rows)]


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


def read_trial_rows(path: str) -> list[dict[str, str]]:
    """The per-trial table of a results file that `write_results_md` wrote (the table whose
    header starts `setting | seed`): one {column header: cell text} per trial, in file order."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("|"):
                header = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[:2] == ["setting", "seed"]:
                header = cells
            elif header and len(cells) == len(header) and not set(cells[0]) <= set("-:"):
                rows.append(dict(zip(header, cells)))
    return rows


def write_results_md(study: Study, rows: list[dict[str, Any]], path: str, *,
                     header: dict[str, str], ledger_dir: str = "results") -> str:
    """results/<study>.md: one row per trial, mean ± 95% CI, the paper's number, MLflow run id.
    Its ledger link points at `ledger_dir`/LEDGER.md (`kdray ledger`'s default --out) relative
    to the file, so it also resolves from a table written with another --results-dir."""
    cols = list(study.columns) or [(study.metric, study.metric)]
    checks = _checks(rows)
    lines = [f"# {study.name}", ""]
    lines += [paragraph(study), ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    link = os.path.relpath(os.path.join(ledger_dir, "LEDGER.md"),
                           os.path.dirname(os.path.abspath(path))).replace(os.sep, "/")
    lines.append(f"- ledger: [results/LEDGER.md#{study.name}]({link}#{study.name})")
    lines += ["", "| setting | seed | split | " + " | ".join(h for h, _ in cols + checks)
              + " | paper | epochs | status | MLflow run |",
              "|---" * (len(cols) + len(checks) + 7) + "|"]
    errors = []
    for r in rows:
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r["params"].items())
        label = r["label"] + (f" ({params})" if params else "")
        status = r["status"]
        if status == "error" and r.get("error"):
            errors.append(f"{len(errors) + 1}. {label}, seed {r['seed']}: {r['error']}")
            status = f"error [{len(errors)}]"
        lines.append(f"| {label} | {r['seed']} | {r.get('split', '–')} | "
                     + " | ".join([*(fmt_ci(r["metrics"], k) for _, k in cols),
                                   *(r.get(k) or "–" for _, k in checks)])
                     + f" | {r['paper'] or '–'} | {_short(r['epochs'])} | {status} | "
                     f"`{r['run_id'] or '–'}` |")
    if any(fmt_ci(r["metrics"], k).endswith("]") for r in rows for _, k in cols):
        lines += ["", "top-1 of a single run: [95% Wilson interval over its evaluated images]."]
    lines += status_notes(rows, errors)
    lines += check_notes(checks)
    lines += row_summary(study, rows, cols)
    lines += claim_summary(study, rows, cols)
    lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def status_notes(rows: list[dict[str, Any]], errors: list[str]) -> list[str]:
    """Under the table: what its statuses mean (when a row is not finished) and each error's
    reason, numbered as in the status column."""
    seen = {r["status"] for r in rows} - {"finished"}
    if not seen:
        return []
    meaning = {"stopped": "stopped early by ASHA", "error": "failed (reason below; "
               "deterministic errors are not retried)",
               "interrupted": "stopped by Ctrl-C before the end; `--resume` continues it"}
    out = ["", "status: " + "; ".join(f"{s}: {meaning[s]}" for s in sorted(seen) if s in meaning)
           + "."]
    if errors:
        out += ["", "Errors:", "", *errors]
    return out


def check_notes(checks: list[tuple[str, str]]) -> list[str]:
    """What the health-check columns mean, under the table that shows them."""
    notes = {"health": "health: the self-distillation target at the last epoch (train/ "
                       "t_entropy, t_one_prototype): ok, collapsed (uniform) or collapsed (one "
                       "prototype).",
             "teacher": "teacher: the frozen teacher's top-1 on the split, measured once at "
                        f"the first evaluation (card: its registry card's top-1, ! = more than "
                        f"{CARD_TOLERANCE:g} point apart); agree: % of images where teacher and "
                        "student argmax agree at the final evaluation."}
    return ["", *(notes[k] for _, k in checks)] if checks else []


def finished_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The finished trials of each ablation row and of the val-selected re-run, by label, in
    table order (searched trials left out: their numbers are on val)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if (not r["params"] or r["label"] == BEST_LABEL) and r["status"] == "finished":
            groups.setdefault(r["label"], []).append(r)
    return groups


def row_summary(study: Study, rows: list[dict[str, Any]],
                cols: list[tuple[str, str]]) -> list[str]:
    """Markdown lines of the second table, one line per ablation row over its seeds that ran to
    the end (status finished): n, mean ± sample std (ddof=1) of every column, and for each of
    `study.compared` the Δ vs the baseline row with its 95% interval (`kdray.study.stats`).
    Searched trials and unfinished seeds are left out; empty when the study has no finished
    ablation row."""
    groups = finished_groups(rows)
    if not groups:
        return []
    base_label = study.baseline_label
    base = groups.get(base_label or "", [])
    heads = dict((k, h) for h, k in cols)
    compared = [(heads.get(k, k), k) for k in study.compared] if base_label else []
    health = [h for h, _ in _checks([r for g in groups.values() for r in g]) if h == "health"]
    about = (f"; Δ = row − baseline `{base_label}`, 95% CI (t-interval): few-shot accuracy "
             f"pairs per (seed, episode), the interval over seeds from {stats.MIN_N} seeds on, "
             "else over the pooled episodes (then without training noise); other metrics pair "
             f"per seed (no interval below {stats.MIN_N} seeds); * = CI excludes 0"
             if compared else "")
    out = ["", "Per setting over its seeds that ran to the end: mean ± sample std, "
           f"n seeds{about}.", "",
           "| " + " | ".join(["setting", "n", *(h for h, _ in cols), *health,
                              *(f"Δ {h} [95% CI]" for h, _ in compared), "paper"]) + " |",
           "|---" * (len(cols) + len(health) + len(compared) + 3) + "|"]
    for label, g in groups.items():
        cells = [_mean_std_cell([r["metrics"].get(k) for r in g]) for _, k in cols]
        cells += [_verdicts([r.get("health") or "" for r in g]) for _ in health]
        deltas = ["baseline" if label == base_label else _delta_cell(g, base, k)
                  for _, k in compared]
        out.append(f"| {label} | {len(g)} | " + " | ".join(cells + deltas)
                   + f" | {g[0]['paper'] or '–'} |")
    return out


def claim_summary(study: Study, rows: list[dict[str, Any]],
                  cols: list[tuple[str, str]]) -> list[str]:
    """The paper's claims (`study.claims`, "A > B"), each with the paired Δ = A − B of every
    compared column and a verdict: holds (CI above 0), contradicted (CI below 0), not shown
    (CI spans 0, or too few pairs)."""
    if not study.claims:
        return []
    groups = finished_groups(rows)
    heads = dict((k, h) for h, k in cols)
    compared = [(heads.get(k, k), k) for k in study.compared]
    out = ["", "The paper's claims: paired Δ = first − second, 95% CI (paired as above); holds = "
           "CI above 0, contradicted = CI below 0, not shown = CI spans 0 or too few pairs.", "",
           "| claim | " + " | ".join(f"Δ {h} [95% CI]" for h, _ in compared) + " | verdict |",
           "|---" * (len(compared) + 2) + "|"]
    for a, b in study.claims:
        ga, gb = groups.get(a, []), groups.get(b, [])
        deltas = [row_delta(ga, gb, k) if ga and gb else None for _, k in compared]
        first = deltas[0] if deltas else None
        verdict = ("not run" if first is None else "holds" if first.significant and first.mean > 0
                   else "contradicted" if first.significant else "not shown")
        out.append(f"| {a} > {b} | " + " | ".join(d.text() if d else "–" for d in deltas)
                   + f" | {verdict} |")
    return out


def _verdicts(flags: list[str]) -> str:
    """One setting's health verdicts over its seeds: "ok", or each with its count when they
    differ, e.g. "collapsed (uniform) 1/3, ok 2/3"."""
    counts = {f or "–": flags.count(f) for f in flags}
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{f} {c}/{len(flags)}" for f, c in sorted(counts.items()))


def _mean_std_cell(values: list[Any]) -> str:
    v = [float(x) for x in values if _finite(x)]
    if not v:
        return "–"
    mean, std, _ = stats.mean_std(v)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


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
