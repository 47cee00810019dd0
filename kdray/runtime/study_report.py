"""The study's records around `run_study` (kdray.runtime.tune): its MLflow parent run, the trial
runs found again by key, runs left RUNNING by a dead process, the search report and the results
table with best.json."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from kdray.study.describe import paragraph, val_source
from kdray.study.spec import BEST_LABEL, Study
from kdray.study.table import git_short_sha, hardware_summary, summarize_rows, write_results_md

log = logging.getLogger(__name__)


def open_study_run(study: Study, tracking_uri: str | None, experiment: str | None,
                   resume: bool) -> tuple[Any, str, str, dict[str, Any]]:
    """(client, experiment id, parent run id, the trials' tracking dict) of the study's run."""
    import mlflow

    from kdray.runtime.mlflow_store import default_tracking_uri, get_or_create_experiment
    from kdray.runtime.tracking import start_study_run

    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, experiment or study.name)
    parent = start_study_run(uri, exp_id, study.name, params=study.base.flatten(),
                             tags={"kdray.metric": study.key(),
                                   "kdray.select_metric": study.select_key}, resume=resume)
    return client, exp_id, parent, {"uri": uri, "experiment_id": exp_id,
                                    "parent_run_id": parent}


def portable_uri(uri: str, *, keep_folder: bool = False) -> str:
    """A tracking URI as a results file names it: a local sqlite store relative to the working
    directory (sqlite:///mlflow.db), never an absolute path of the machine that ran the study;
    a store outside it by its file name (`keep_folder`: `<its folder>/<file>`, to tell several
    stores apart)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and os.path.isabs(uri[len(prefix):]):
        return prefix + portable_path(uri[len(prefix):], keep_folder=keep_folder)
    return uri


def portable_path(path: str, *, keep_folder: bool = False) -> str:
    """An absolute local path as a committed file names it: relative to the working directory
    when below it, else its file name (`keep_folder`: `<its folder>/<file>`)."""
    rel = os.path.relpath(path)
    if not rel.startswith(".."):
        return rel
    name = os.path.basename(path)
    return os.path.join(os.path.basename(os.path.dirname(path)), name) if keep_folder else name


def portable_command(argv: list[str]) -> str:
    """`python <script> <args>` as a results header shows it: every absolute path (the script,
    `--set key=/abs/path` values) relative to the working directory, else to the project, else
    as `<its folder>/<file>`."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def shown(arg: str) -> str:
        key, eq, value = arg.rpartition("=")
        if not os.path.isabs(value):
            return arg
        for base in (os.getcwd(), repo):
            rel = os.path.relpath(value, base)
            if not rel.startswith(".."):
                return key + eq + rel
        return key + eq + portable_path(value, keep_folder=True)

    return " ".join(["python", *map(shown, argv)])


def attach_runs(client, exp_id: str, trials: list[dict]) -> None:
    """Each trial's MLflow run id; finished ablation rows also get their episode records (the
    table pairs their few-shot episodes with the baseline's)."""
    from kdray.runtime.mlflow_store import episode_records

    ids = runs_by_key(client, exp_id, [t["run_key"] for t in trials])
    for t in trials:
        t["run_id"] = ids.get(t["run_key"])
        if t["run_id"] and not t["params"] and t["status"] == "finished":
            t["episodes"] = episode_records(client, t["run_id"])


def runs_by_key(client, experiment_id: str, keys: list[str]) -> dict[str, str]:
    """MLflow run ids of trial runs by their stable `kdray.run_key` tag."""
    out: dict[str, str] = {}
    for run in client.search_runs([experiment_id], max_results=5000):
        k = run.data.tags.get("kdray.run_key")
        if k in keys:
            out[k] = run.info.run_id
    return out


def report(study: Study, trials: list[dict], best: dict | None, client, parent: str, path: str,
           info: dict[str, str], interrupted: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Write results/<study>.md (header: the study's facts, then `info`), log it and best.json
    (the val-selected searched trial, its val metrics; none without a search) to the parent run,
    and end that run (KILLED, tag `kdray.status=interrupted`, when `interrupted`)."""
    from kdray.runtime.interrupts import end_parent

    rows = summarize_rows(study, trials)
    header = {"study": study.name, "command": f"`{portable_command(sys.argv)}`",
              "method": study.base.method, "dataset": study.base.data.dataset,
              "seeds": ", ".join(map(str, study.seeds)), "hardware": hardware_summary(),
              "kdray commit": git_short_sha(), "metric": _metric_line(study), **info}
    text = write_results_md(study, rows, path, header=header)
    client.log_text(parent, text, f"results/{study.name}.md")
    describe_study_run(study, client, parent, rows, text)
    chart = ablation_chart(study, rows, client, parent, os.path.dirname(path) or ".")
    if best is not None:
        client.log_dict(parent, {**{k: best[k] for k in ("name", "label", "seed", "params",
                                                         "metrics", "config")},
                                 "selected_on": study.select_key}, "best.json")
    end_parent(client, parent, interrupted)
    show_results(text, path, client, parent)
    if chart:
        from kdray.runtime.console import emit

        emit(f"[kdray] ablation chart: {chart}")
    return rows, path


def ablation_chart(study: Study, rows: list[dict[str, Any]], client, parent: str,
                   results_dir: str) -> str | None:
    """results/<study>_ablation.png (kdray.study.figures), and where they apply <study>_paper.png
    (paper vs ours) and <study>_sessions.png (FSCIL sessions), each also logged to the study run
    under figures/; a failing figure is logged and never costs the study its table."""
    from kdray.study.figures import plot_ablation, plot_paper_scatter, plot_sessions

    path = os.path.join(results_dir, f"{study.name}_ablation.png")
    try:
        plot_ablation(study, rows, path)
        client.log_artifact(parent, path, "figures")
    except Exception:
        log.exception("ablation chart failed")
        return None
    for suffix, plot in (("paper", plot_paper_scatter), ("sessions", plot_sessions)):
        extra = os.path.join(results_dir, f"{study.name}_{suffix}.png")
        try:  # written only when the study has paper cells of its own setting / FSCIL sessions
            if os.path.exists(extra):
                os.remove(extra)  # a stale picture of an earlier run
            plot(study, rows, extra)
            if os.path.exists(extra):
                client.log_artifact(parent, extra, "figures")
        except Exception:
            log.exception("%s figure failed", suffix)
    return path


def slug(label: str) -> str:
    """A row label as an MLflow key part: `+ supervised [CLS] (Eq. 3)` -> `supervised_CLS_Eq_3`."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "row"


def row_metrics(study: Study, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The study run's metrics: each finished row's final numbers, as
    `row/<label slug>/s<seed>/<split>/<column>` (searched trials left out: their numbers are on
    val and in the search report)."""
    import math

    out: dict[str, float] = {}
    keys = [k for _, k in study.columns] or [study.metric]
    for r in rows:
        if r["status"] != "finished" or not r["label"] or r["label"].startswith("search"):
            continue
        if study.space and r["label"] not in {x.label for x in study.rows} | {BEST_LABEL}:
            continue
        for k in dict.fromkeys([study.metric, *keys]):
            v = r["metrics"].get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[f"row/{slug(r['label'])}/s{r['seed']}/{r['split']}/{k}"] = float(v)
    return out


def describe_study_run(study: Study, client, parent: str, rows: list[dict[str, Any]],
                       text: str) -> None:
    """The study run's description (its MLflow note: the study's description and the results
    table) and its metrics (`row_metrics`)."""
    import time

    from mlflow.entities import Metric

    from kdray.study.progress import console_table

    note = paragraph(study) + "\n\n" + console_table(text)
    client.set_tag(parent, "mlflow.note.content", note)
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, 0) for k, v in row_metrics(study, rows).items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(parent, metrics=metrics[i:i + 500])


def show_results(text: str, path: str, client, parent: str) -> None:
    """The console's end: the results tables (not the header), where the file is, and the study
    run's page in MLflow's UI with the command that serves it."""
    from kdray.runtime.console import emit
    from kdray.runtime.mlflow_store import ui_command, ui_url
    from kdray.study.progress import console_table

    uri = client.tracking_uri
    exp_id = client.get_run(parent).info.experiment_id
    emit(console_table(text))
    emit(f"[kdray] results: {path}")
    cmd = ui_command(portable_uri(uri))
    emit(f"[kdray] MLflow: {ui_url(uri, exp_id, parent)}" + (f"  (serve it: {cmd})" if cmd else ""))


def _metric_line(study: Study) -> str:
    """The results header's metric: which split each kind of row is scored on."""
    line = f"{study.metric} ({study.mode}); rows on {study.base.eval.split}"
    if study.space:
        line += (f"; searched trials scored, stopped and selected on {study.select_key} only"
                 f" ({val_source(study)}), the val-selected point re-run on "
                 f"{study.base.eval.split} as '{BEST_LABEL}'")
    return line


def search_report(study: Study, client, parent: str, searched: list[dict], results_dir: str,
                  space: dict, osetup, header: dict | None) -> dict:
    """Log the search report (kdray.runtime.search_report) to the study run and beside the
    results; returns the results header with a line pointing at it. A failing figure is logged
    and never costs the study its results table."""
    from kdray.runtime import search_report as sr

    try:
        out = sr.log_search_report(
            client, parent, searched, results_dir, study_name=study.name,
            metric=study.select_key, mode=study.mode, space=space,
            grace_period=study.grace_period, reduction_factor=study.reduction_factor,
            max_epochs=study.base.train.epochs,
            storage_url=osetup.storage_url if osetup else None)
        return {**(header or {}), "search report": f"`{out}/` (MLflow: `search/`)"}
    except Exception:
        log.exception("search report failed")
        return dict(header or {})


WALL_TAG = "kdray.wall_s"  # the study's wall time over all its runs (resumes add theirs)


def wall_time(client, parent: str, elapsed: float, resume: bool) -> str:
    """The header's wall time: this run's (from before its stages, when the script says when it
    started), added to what earlier runs of a resumed study took (the parent's tag; for a study
    run before the tag existed, its parent run's first start to end)."""
    run = client.get_run(parent)
    prev = float(run.data.tags.get(WALL_TAG, 0) or 0)
    if resume and not prev and run.info.end_time and run.info.start_time:
        prev = max(0.0, (run.info.end_time - run.info.start_time) / 1000)
    total = prev + elapsed
    client.set_tag(parent, WALL_TAG, f"{total:.0f}")
    if resume and prev:
        return (f"{total:.0f} s in all ({prev:.0f} s before the resume, {elapsed:.0f} s in the "
                "resumed run)")
    return f"{elapsed:.0f} s" + (" (resumed run)" if resume else "")
