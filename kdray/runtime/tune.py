"""`run_study`: Ray Tune over a Study — grid over ablation rows x seeds (reported on the rows'
split, normally test), then an Optuna TPE (or random) search with ASHA scored, stopped and
selected on val only, then the val-selected point trained with the study's seeds and reported on
the rows' split — with one MLflow parent run and `results/<study>.md`."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from kdray.search import Choice, Domain, Float, Int
from kdray.study.spec import BEST_LABEL, ROW_KEY, SEED_KEY, Study, trial_name
from kdray.study.table import git_short_sha, hardware_summary, summarize_rows, write_results_md

log = logging.getLogger(__name__)
TRIAL_SLOT = "kd_trial_slot"  # custom resource: only on-demand nodes host trial drivers


@dataclass
class StudyResult:
    rows: list[dict[str, Any]]
    parent_run_id: str
    results_path: str
    best: dict[str, Any] | None


def _trainable(study: Study, phase: str, storage_path: str, tracking: dict[str, Any]):
    def run_trial(params: dict[str, Any]) -> None:
        from ray import tune

        from kdray.runtime.driver import make_trainer

        ctx = tune.get_context()
        cfg = study.trial_config(params)
        name = ctx.get_trial_name()
        tr = dict(tracking, run_key=f"{study.name}/{phase}/{ctx.get_trial_id()}", run_name=name)
        make_trainer(cfg, run_name=f"{study.name}-{phase}-{ctx.get_trial_id()}",
                     storage_path=storage_path, tracking=tr, in_tune=True).fit()
        log.info("trial %s finished", name)

    return run_trial


def _run_phase(study: Study, phase: str, param_space: dict, *, search: str, num_samples: int,
               scheduler: bool, storage_path: str, tracking: dict, resume: bool,
               callbacks: list | None = None) -> list[dict]:
    """One Tuner over `param_space` (the grid of rows x seeds, the searched space, or the
    val-selected point x seeds); returns one dict per trial, in row order. Only the search phase
    gives Tune a metric (`study.select_key`, val): grid and best phases are not ranked by Tune."""
    import ray
    from ray import tune

    trial_res: dict[str, float] = {"cpu": 0, "memory": 256 * 1024**2}  # docs/runtime.md §P3
    if ray.cluster_resources().get(TRIAL_SLOT, 0) > 0:
        trial_res = {"cpu": 0, TRIAL_SLOT: 1}
    trainable = tune.with_resources(_trainable(study, phase, storage_path, tracking), trial_res)
    seen: dict[str, int] = {}

    def index(trial_id: str) -> int:
        """Grid trial ids end in a counter ("..._00003"); searcher trial ids are random hex."""
        tail = str(trial_id).split("_")[-1]
        return int(tail) if tail.isdigit() else seen.setdefault(str(trial_id), len(seen))

    path = os.path.join(storage_path, f"{study.name}-{phase}")
    if resume and tune.Tuner.can_restore(path):
        log.info("restoring %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        run_cfg = tune.RunConfig(name=f"{study.name}-{phase}", storage_path=storage_path,
                                 failure_config=tune.FailureConfig(max_failures=0), verbose=1,
                                 callbacks=list(callbacks or []))  # Tune appends to it
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_cfg,
                           tune_config=_tune_config(study, search, num_samples, scheduler, index,
                                                    ranked=phase == "search"))
    out = [_trial_record(study, phase, res, index) for res in tuner.fit()]
    order = {r.label: i for i, r in enumerate(study.rows)}
    return sorted(out, key=lambda t: (order.get(t["label"], len(order)), str(t["seed"]), t["name"]))


def _tune_config(study: Study, search: str, num_samples: int, scheduler: bool, index,
                 ranked: bool = False):
    """TuneConfig: Optuna TPE (or none), ASHA on epochs (or none), as many concurrent trials as
    the cluster's CPUs/GPUs fit, trial names from the row, sample index and seed. `ranked`: Tune
    gets the metric `study.select_key` (val); otherwise none (grid rows are not ranked)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from kdray.runtime.session import cluster_slots

    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=study.search_seed)
    sched = None
    if scheduler:
        sched = ASHAScheduler(time_attr="epoch", max_t=study.base.train.epochs,
                              grace_period=study.grace_period,
                              reduction_factor=study.reduction_factor)
    r = study.base.resources
    slots = cluster_slots(r.num_workers * r.cpus_per_worker, r.num_workers * r.gpus_per_worker)
    return tune.TuneConfig(
        metric=study.select_key if ranked else None, mode=study.mode if ranked else None,
        search_alg=search_alg, scheduler=sched,
        num_samples=num_samples, max_concurrent_trials=slots,
        trial_name_creator=lambda t: trial_name(t.config, index(t.trial_id)),
        trial_dirname_creator=lambda t: trial_name(t.config, index(t.trial_id)))


def _trial_record(study: Study, phase: str, res, index) -> dict[str, Any]:
    """A Tune result as the plain dict the results table and best.json are made from."""
    m = dict(res.metrics or {})
    params = dict(res.config or {})
    trial_id = m.get("trial_id", "")
    status = "error" if res.error else ("finished" if m.get("epoch") == study.base.train.epochs
                                        else "stopped")
    label = BEST_LABEL if phase == "best" else params.get(ROW_KEY, phase)
    return {"name": trial_name(params, index(trial_id)),
            "label": label, "seed": params.get(SEED_KEY, study.base.seed),
            "params": {k: v for k, v in params.items() if k not in (ROW_KEY, SEED_KEY)},
            "metrics": m, "status": status, "error": repr(res.error) if res.error else None,
            "run_key": f"{study.name}/{phase}/{trial_id}",
            "config": study.trial_config(params).to_dict(),
            "paper": study.row(label).paper if ROW_KEY in params else ""}


def runs_by_key(client, experiment_id: str, keys: list[str]) -> dict[str, str]:
    """MLflow run ids of trial runs by their stable `kdray.run_key` tag."""
    out: dict[str, str] = {}
    for run in client.search_runs([experiment_id], max_results=5000):
        k = run.data.tags.get("kdray.run_key")
        if k in keys:
            out[k] = run.info.run_id
    return out


def mark_failed_runs(client, run_ids: list[str]) -> None:
    """Trials that died without closing their MLflow run (e.g. a killed process) end FAILED."""
    for rid in run_ids:
        if client.get_run(rid).info.status == "RUNNING":
            client.set_terminated(rid, "FAILED")


def run_study(study: Study, *, address: str | None = None, storage_path: str | None = None,
              tracking_uri: str | None = None, experiment: str | None = None,
              resume: bool = False, results_dir: str = "results", header: dict | None = None,
              search_row: str | None = None, callbacks: list | None = None) -> StudyResult:
    """Run the study's ablation grid (rows x seeds, on the rows' split), then its search (if it
    has a space) on val only, then the val-selected point with the study's seeds on the rows'
    split (the row `BEST_LABEL`). best.json: the val-selected searched trial and its val score.

    Every config is validated and its data and checkpoints are checked before Ray starts.
    `search_row` names the row whose overrides the search starts from (default: the last row).
    `callbacks`: ray.tune Callbacks given to every phase's Tuner (e.g. to record results).
    """
    import mlflow

    from kdray.runtime.mlflow_store import (
        default_tracking_uri,
        episode_records,
        get_or_create_experiment,
    )
    from kdray.runtime.session import ensure_ray
    from kdray.runtime.tracking import start_study_run

    study = _checked(study, search_row)
    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or os.path.abspath(
        "ray_results")
    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, experiment or study.name)
    parent = start_study_run(uri, exp_id, study.name, params=study.base.flatten(),
                             tags={"kdray.metric": study.key(),
                                   "kdray.select_metric": study.select_key}, resume=resume)
    tracking = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent}
    ensure_ray(address)
    t0 = time.time()
    trials: list[dict] = []
    if study.rows or not study.space:
        space: dict[str, Any] = {SEED_KEY: _grid(study.seeds)}
        if study.rows:
            space[ROW_KEY] = _grid([r.label for r in study.rows])
        trials += _run_phase(study, "grid", space, search="grid", num_samples=1, scheduler=False,
                             storage_path=storage_path, tracking=tracking, resume=resume,
                             callbacks=callbacks)
    best = None
    if study.space:
        sstudy = replace(study, base=study.search_base(search_row))
        space = {k: to_tune(d) for k, d in study.space.items()}
        searched = _run_phase(sstudy, "search", space, search=study.search,
                              num_samples=study.num_samples, scheduler=study.scheduler == "asha",
                              storage_path=storage_path, tracking=tracking, resume=resume,
                              callbacks=callbacks)
        trials += searched
        best = study.searched_best(searched)
        if best is not None:  # the val-selected point, trained with every seed, on the rows' split
            fstudy = replace(study, base=study.report_base(search_row))
            space = {**best["params"], SEED_KEY: _grid(study.seeds)}
            trials += _run_phase(fstudy, "best", space, search="grid", num_samples=1,
                                 scheduler=False, storage_path=storage_path, tracking=tracking,
                                 resume=resume, callbacks=callbacks)
    ids = runs_by_key(client, exp_id, [t["run_key"] for t in trials])
    for t in trials:
        t["run_id"] = ids.get(t["run_key"])
        if t["run_id"] and not t["params"] and t["status"] == "finished":
            # finished ablation rows: the table pairs their few-shot episodes with the baseline's
            t["episodes"] = episode_records(client, t["run_id"])
    mark_failed_runs(client, [t["run_id"] for t in trials
                              if t["status"] == "error" and t["run_id"]])
    info = {"wall time": f"{time.time() - t0:.0f} s" + (" (resumed run)" if resume else ""),
            "MLflow parent run": f"`{parent}` ({uri})", **(header or {})}
    return _report(study, trials, best, client, parent,
                   os.path.join(results_dir, f"{study.name}.md"), info)


def _checked(study: Study, search_row: str | None) -> Study:
    """The study with absolute paths, after every config it can run was built and pre-flighted."""
    from kdray.runtime.session import preflight, resolve_paths

    study = replace(study, base=resolve_paths(study.base))
    seen = set()
    for c in study.validate(search_row):
        key = (c.method, c.data.dataset, c.model, c.train.init_from)
        if key not in seen:
            seen.add(key)
            preflight(c)
    return study


def _report(study: Study, trials: list[dict], best: dict | None, client, parent: str, path: str,
            info: dict[str, str]) -> StudyResult:
    """Write results/<study>.md (header: the study's facts, then `info`), log it and best.json
    (the val-selected searched trial, its val metrics; none without a search) to the parent run,
    and end that run."""
    rows = summarize_rows(study, trials)
    header = {"study": study.name, "command": "`" + " ".join(["python", *sys.argv]) + "`",
              "method": study.base.method, "dataset": study.base.data.dataset,
              "seeds": ", ".join(map(str, study.seeds)), "hardware": hardware_summary(),
              "kdray commit": git_short_sha(), "metric": _metric_line(study), **info}
    text = write_results_md(study, rows, path, header=header)
    client.log_text(parent, text, f"results/{study.name}.md")
    if best is not None:
        client.log_dict(parent, {**{k: best[k] for k in ("name", "label", "seed", "params",
                                                         "metrics", "config")},
                                 "selected_on": study.select_key}, "best.json")
    client.set_terminated(parent, "FINISHED")
    print(text)
    return StudyResult(rows, parent, path, best)


def _metric_line(study: Study) -> str:
    """The results header's metric: which split each kind of row is scored on."""
    line = f"{study.metric} ({study.mode}); rows on {study.base.eval.split}"
    if study.space:
        line += (f"; searched trials scored, stopped and selected on {study.select_key} only"
                 f" ({_val_source(study)}), the val-selected point re-run on "
                 f"{study.base.eval.split} as '{BEST_LABEL}'")
    return line


def _val_source(study: Study) -> str:
    from kdray.data.base import HOLDOUT_FRACTION
    from kdray.data.registry import CARVED_VAL

    if study.base.data.dataset in CARVED_VAL:
        return (f"val carved from train: a fixed {HOLDOUT_FRACTION:.0%} of each class, left out "
                "of the searched trials' training")
    return f"the val split of {study.base.data.dataset}"


def _grid(values):
    from ray import tune

    return tune.grid_search(list(values))


def to_tune(d: Domain):
    """The Tune domain of a kdray search range."""
    from ray import tune

    if isinstance(d, Choice):
        return tune.choice(list(d.values))
    if isinstance(d, Float):
        return tune.loguniform(d.low, d.high) if d.log else tune.uniform(d.low, d.high)
    if isinstance(d, Int):  # Tune's integer upper bound is exclusive; ours is inclusive
        return tune.lograndint(d.low, d.high + 1) if d.log else tune.randint(d.low, d.high + 1)
    raise TypeError(f"unknown domain {d!r}")
