"""The search explained: after the search phase, its figures and ASHA rung table (the Optuna
study itself is kept by kdray.runtime.optuna_store).

Report (`log_search_report`): PNGs and text under `search/` of the parent MLflow run and in
`<results dir>/<study>_search/`: `optimization_history.png`, `param_importances_<evaluator>.png`,
`parallel_coordinate.png`, `trials.md` (one line per trial with the ASHA rung (epoch) at which
it stopped, the first-rung and the final metric, and the Spearman correlation between the two
over trials that finished), `summary.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdray.runtime.optuna_store import load_study, redacted

log = logging.getLogger(__name__)

MIN_IMPORTANCE_TRIALS = 2   # optuna's evaluators need two completed trials
MIN_SPEARMAN_TRIALS = 3
IMPORTANCE_EVALUATOR = "fANOVA"  # FanovaImportanceEvaluator(seed=0); optuna 5 defaults to PED-ANOVA


# ----------------------------------------------------------------------------- storage
def _ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties get their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str]:
    """Spearman's rank correlation (average ranks for ties) and a sentence saying what it is.

    None with the reason when fewer than MIN_SPEARMAN_TRIALS pairs exist or a side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    n = len(x)
    if n < MIN_SPEARMAN_TRIALS:
        return None, (f"too few finished trials for a rank correlation (n={n}; need at least "
                      f"{MIN_SPEARMAN_TRIALS})")
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None, f"undefined: one side is constant over the n={n} finished trials"
    rho = sxy / math.sqrt(sxx * syy)
    return rho, f"Spearman rho = {rho:.3f} over n={n} finished trials"


# ----------------------------------------------------------------------------- Tune results
def epoch_history(result, metric: str) -> list[tuple[int, float]]:
    """(epoch, metric) pairs a Tune trial reported, the last value per epoch (a restored trial
    may report an epoch twice)."""
    df = getattr(result, "metrics_dataframe", None)
    if df is None or "epoch" not in df.columns or metric not in df.columns:
        return []
    out: dict[int, float] = {}
    for ep, v in zip(df["epoch"], df[metric]):
        try:
            ep, v = int(ep), float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[ep] = v
    return sorted(out.items())


def asha_rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials (Ray's milestones below max_t)."""
    rungs, r = [], grace_period
    while r < max_t:
        rungs.append(r)
        r *= reduction_factor
    return rungs


def rung_rows(trials: list[dict], metric: str, grace_period: int) -> list[dict[str, Any]]:
    """One row per searched trial: where it stopped, its first-rung and its last metric."""
    rows = []
    for t in trials:
        hist = dict(t.get("history") or [])
        max_ep = int(((t.get("config") or {}).get("train") or {}).get("epochs") or 0)
        last_ep = max(hist) if hist else (t.get("metrics") or {}).get("epoch")
        rows.append({"name": t["name"], "params": t.get("params", {}), "status": t["status"],
                     "last_epoch": last_ep, "max_epochs": max_ep,
                     "first_rung": hist.get(grace_period), "final": hist.get(last_ep)
                     if hist else (t.get("metrics") or {}).get(metric),
                     "run_id": t.get("run_id")})
    return rows


def rung_table_md(rows: list[dict[str, Any]], metric: str, grace_period: int,
                  rungs: list[int], corr_text: str) -> str:
    lines = ["| trial | params | status | stopped at epoch (ASHA rung) | max epochs | "
             f"{metric} @ epoch {grace_period} (first rung) | {metric} final | MLflow run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in r["params"].items())
        stop = (f"{r['last_epoch']}" if r["status"] == "stopped" else
                "– (ran all epochs)" if r["status"] == "finished" else f"– ({r['status']})")
        lines.append(f"| {r['name']} | {params} | {r['status']} | {stop} | {r['max_epochs']} | "
                     f"{_fmt(r['first_rung'])} | {_fmt(r['final'])} | `{r['run_id'] or '–'}` |")
    lines += ["", f"ASHA rungs (epochs): {', '.join(map(str, rungs)) or 'none'}.",
              f"First-rung vs final {metric}: {corr_text}."]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------- figures
def report_study(rows: list[dict], storage_url: str | None, study_name: str, space: dict,
                 mode: str):
    """The Optuna study to plot: the persisted one, else one built in memory from the Tune
    trials (random search, or a searcher kept in memory)."""
    import optuna
    from optuna.trial import TrialState, create_trial
    from ray.tune.search.optuna import OptunaSearch

    if storage_url is not None:
        try:
            return load_study(storage_url, study_name)
        except KeyError:  # e.g. Tune restored a searcher that kept its study in memory
            log.warning("no Optuna study %r in %s; plotting this run's trials",
                        study_name, redacted(storage_url))
    dists = OptunaSearch.convert_search_space(space)
    st = optuna.create_study(direction="minimize" if mode == "min" else "maximize",
                             study_name=study_name)
    for r in rows:
        v = r["final"]
        params = {k: r["params"][k] for k in dists if k in r["params"]}
        ok = v is not None and len(params) == len(dists)
        st.add_trial(create_trial(state=TrialState.COMPLETE if ok else TrialState.FAIL,
                                  value=v if ok else None, params=params,
                                  distributions={k: dists[k] for k in params}))
    return st


def _save(ax, path: Path, title: str | None = None) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.ravel()[0].figure
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _text_png(path: Path, title: str, text: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.4))
    fig.text(0.02, 0.7, title, fontsize=11, weight="bold")
    fig.text(0.02, 0.4, text, fontsize=9, wrap=True)
    fig.savefig(path, dpi=100)


def write_figures(ost, out: Path, metric: str) -> dict[str, Any]:
    """optimization_history.png, param_importances_fanova.png, parallel_coordinate.png in
    `out`; returns the importances (or why none) and the trial counts."""
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vm

    complete = ost.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    info: dict[str, Any] = {"optuna_trials": len(ost.trials), "complete": len(complete),
                            "importance_evaluator": "FanovaImportanceEvaluator(seed=0)"}
    imp_file = out / f"param_importances_{IMPORTANCE_EVALUATOR.lower()}.png"
    with warnings.catch_warnings(), matplotlib.rc_context():  # optuna sets the ggplot style
        warnings.simplefilter("ignore", ExperimentalWarning)
        was_interactive = plt.isinteractive()
        plt.ioff()
        try:
            _save(vm.plot_optimization_history(ost, target_name=metric),
                  out / "optimization_history.png",
                  f"{ost.study_name}: {metric} per trial ({len(complete)} complete of "
                  f"{len(ost.trials)}; ASHA-stopped trials count with their last value)")
            if len(complete) >= 1:
                _save(vm.plot_parallel_coordinate(ost, target_name=metric),
                      out / "parallel_coordinate.png",
                      f"{ost.study_name}: parallel coordinates, {len(complete)} complete trials")
            else:
                _text_png(out / "parallel_coordinate.png", "parallel coordinates",
                          "no completed trial")
            params = {k for t in complete for k in t.params}
            if len(complete) < MIN_IMPORTANCE_TRIALS or not params:
                why = (f"too few completed trials for parameter importances (n={len(complete)}; "
                       f"need at least {MIN_IMPORTANCE_TRIALS})")
                info["importances"], info["importances_note"] = None, why
                _text_png(imp_file, f"parameter importances ({IMPORTANCE_EVALUATOR})", why)
            else:
                ev = FanovaImportanceEvaluator(seed=0)
                info["importances"] = dict(get_param_importances(ost, evaluator=ev))
                info["importances_note"] = (f"{IMPORTANCE_EVALUATOR} over {len(complete)} "
                                            "completed trials"
                                            + (" (few trials: indicative only)"
                                               if len(complete) < 10 else ""))
                _save(vm.plot_param_importances(ost, evaluator=FanovaImportanceEvaluator(seed=0),
                                                target_name=metric), imp_file,
                      f"{ost.study_name}: parameter importances, evaluator "
                      f"{IMPORTANCE_EVALUATOR} (FanovaImportanceEvaluator, seed 0), "
                      f"n={len(complete)}")
        finally:
            if was_interactive:
                plt.ion()
    return info


# ----------------------------------------------------------------------------- the report
def write_search_report(trials: list[dict], out_dir: str | Path, *, study_name: str,
                        metric: str, mode: str, space: dict, grace_period: int,
                        reduction_factor: int, max_epochs: int, storage_url: str | None,
                        optuna_study_name: str | None = None) -> dict[str, Any]:
    """Write the figures, trials.md and summary.json of one search into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = rung_rows(trials, metric, grace_period)
    fin = [r for r in rows if r["status"] == "finished" and r["first_rung"] is not None
           and r["final"] is not None]
    rho, corr_text = spearman([r["first_rung"] for r in fin], [r["final"] for r in fin])
    rungs = asha_rungs(grace_period, reduction_factor, max_epochs)
    ost = report_study(rows, storage_url, optuna_study_name or study_name, space, mode)
    info = write_figures(ost, out, metric)
    notes = [f"# {study_name}: search", "",
             f"- Optuna study: `{ost.study_name}` in {redacted(storage_url)}"
             + (f" (`optuna-dashboard {redacted(storage_url)}`)" if storage_url else ""),
             f"- metric: {metric} ({mode}); trials in the Optuna study: "
             f"{info['optuna_trials']} ({info['complete']} complete); in this Tune run: "
             f"{len(trials)}",
             f"- parameter importances ({info['importance_evaluator']}): "
             + (", ".join(f"{k}={v:.3f}" for k, v in info["importances"].items())
                + f" ({info['importances_note']})" if info["importances"]
                else info["importances_note"]),
             "- trials stopped by ASHA are told to Optuna as complete with their last "
             "(early) value, so history and importances mix budgets (docs/searching.md §2)",
             "", rung_table_md(rows, metric, grace_period, rungs, corr_text), ""]
    (out / "trials.md").write_text("\n".join(notes))
    summary = {"study": study_name, "optuna_study": ost.study_name,
               "optuna_storage": redacted(storage_url), "metric": metric, "mode": mode,
               "asha_rungs": rungs, "grace_period": grace_period, "max_epochs": max_epochs,
               "spearman_first_rung_vs_final": rho, "spearman_note": corr_text,
               "spearman_n": len(fin), **info, "trials": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def log_search_report(client, parent_run_id: str, trials: list[dict], results_dir: str, *,
                      study_name: str, metric: str, mode: str, space: dict, grace_period: int,
                      reduction_factor: int, max_epochs: int, storage_url: str | None,
                      optuna_study_name: str | None = None) -> str:
    """Write the report to `<results_dir>/<study>_search/` and log it as `search/` artifacts of
    the parent run; tag the parent with the Optuna study and storage. Returns the folder."""
    out = os.path.join(results_dir, f"{study_name}_search")
    write_search_report(trials, out, study_name=study_name, metric=metric, mode=mode,
                        space=space, grace_period=grace_period,
                        reduction_factor=reduction_factor, max_epochs=max_epochs,
                        storage_url=storage_url, optuna_study_name=optuna_study_name)
    client.log_artifacts(parent_run_id, out, "search")
    client.set_tag(parent_run_id, "kdray.optuna_study", optuna_study_name or study_name)
    client.set_tag(parent_run_id, "kdray.optuna_storage", redacted(storage_url))
    return out
