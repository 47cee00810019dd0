"""`run_study`: Ray Tune over a Study — grid over ablation rows x seeds, then an Optuna TPE (or
random) search with ASHA — with one MLflow parent run and `results/<study>.md`."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from kdray.search import Choice, Domain, Float, Int
from kdray.study.spec import ROW_KEY, SEED_KEY, Study, trial_name
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
               searcher=None) -> list[dict]:
    """One Tuner over `param_space` (the grid of rows x seeds, or the searched space); returns
    one dict per trial, in row order. `searcher`: the OptunaSearch to use (search="optuna")."""
    import ray
    from ray import tune

    trial_res: dict[str, float] = {"cpu": 0, "memory": 256 * 1024**2}  # pitfalls.md P3
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
    elif num_samples < 1:
        log.info("%s: no samples left to run", path)
        return []
    else:
        run_cfg = tune.RunConfig(name=f"{study.name}-{phase}", storage_path=storage_path,
                                 failure_config=tune.FailureConfig(max_failures=0), verbose=1)
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_cfg,
                           tune_config=_tune_config(study, search, num_samples, scheduler, index,
                                                    searcher))
    grid = tuner.fit()
    out = [_trial_record(study, phase, res, index) for res in grid]
    if scheduler:  # per-epoch metric, for the search report's ASHA rung table
        from kdray.runtime.search_report import epoch_history

        for rec, res in zip(out, grid):
            rec["history"] = epoch_history(res, study.metric)
    order = {r.label: i for i, r in enumerate(study.rows)}
    return sorted(out, key=lambda t: (order.get(t["label"], len(order)), str(t["seed"]), t["name"]))


def _tune_config(study: Study, search: str, num_samples: int, scheduler: bool, index,
                 searcher=None):
    """TuneConfig: Optuna TPE (or none), ASHA on epochs (or none), as many concurrent trials as
    the cluster's CPUs/GPUs fit, trial names from the row, sample index and seed."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from kdray.runtime.session import cluster_slots

    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = searcher if searcher is not None else OptunaSearch(seed=study.search_seed)
    sched = None
    if scheduler:
        sched = ASHAScheduler(time_attr="epoch", max_t=study.base.train.epochs,
                              grace_period=study.grace_period,
                              reduction_factor=study.reduction_factor)
    r = study.base.resources
    slots = cluster_slots(r.num_workers * r.cpus_per_worker, r.num_workers * r.gpus_per_worker)
    return tune.TuneConfig(
        metric=study.metric, mode=study.mode, search_alg=search_alg, scheduler=sched,
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
    label = params.get(ROW_KEY, phase)
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
              search_row: str | None = None, optuna_storage: str | None = None) -> StudyResult:
    """Run the study's ablation grid (rows x seeds) and then its search (if it has a space).

    Every config is validated and its data and checkpoints are checked before Ray starts.
    `search_row` names the row whose overrides the search starts from (default: the last row).
    `optuna_storage`: where the search's Optuna study is kept (kdray.runtime.search_report).
    """
    import mlflow

    from kdray.runtime.mlflow_store import default_tracking_uri, get_or_create_experiment
    from kdray.runtime.session import ensure_ray
    from kdray.runtime.tracking import start_study_run

    study = _checked(study, search_row)
    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or os.path.abspath(
        "ray_results")
    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, experiment or study.name)
    parent = start_study_run(uri, exp_id, study.name, params=study.base.flatten(),
                             tags={"kdray.metric": study.metric}, resume=resume)
    tracking = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent}
    osetup = None  # the search's OptunaSearch on its stored study, opened before any trial runs
    if study.space and study.search == "optuna":
        from ray import tune

        from kdray.runtime import search_report as sr

        osetup = sr.optuna_search(
            study.name, metric=study.metric, mode=study.mode, seed=study.search_seed,
            num_samples=study.num_samples, resume=resume,
            storage_url=sr.optuna_storage_url(uri, optuna_storage),
            tune_restores=resume and tune.Tuner.can_restore(
                os.path.join(storage_path, f"{study.name}-search")))
    ensure_ray(address)
    t0 = time.time()
    trials: list[dict] = []
    if study.rows or not study.space:
        space: dict[str, Any] = {SEED_KEY: _grid(study.seeds)}
        if study.rows:
            space[ROW_KEY] = _grid([r.label for r in study.rows])
        trials += _run_phase(study, "grid", space, search="grid", num_samples=1, scheduler=False,
                             storage_path=storage_path, tracking=tracking, resume=resume)
    searched: list[dict] = []
    if study.space:
        sstudy = replace(study, base=study.search_base(search_row))
        space = {k: to_tune(d) for k, d in study.space.items()}
        searched = _run_phase(sstudy, "search", space, search=study.search,
                              num_samples=osetup.num_samples if osetup else study.num_samples,
                              scheduler=study.scheduler == "asha", storage_path=storage_path,
                              tracking=tracking, resume=resume,
                              searcher=osetup.searcher if osetup else None)
        trials += searched
    ids = runs_by_key(client, exp_id, [t["run_key"] for t in trials])
    for t in trials:
        t["run_id"] = ids.get(t["run_key"])
    if study.space:
        from kdray.runtime import search_report as sr

        try:
            out = sr.log_search_report(
                client, parent, searched, results_dir, study_name=study.name,
                metric=sstudy.metric, mode=sstudy.mode, space=space,
                grace_period=study.grace_period, reduction_factor=study.reduction_factor,
                max_epochs=sstudy.base.train.epochs,
                storage_url=osetup.storage_url if osetup else None)
            header = {**(header or {}), "search report": f"`{out}/` (MLflow: `search/`)"}
        except Exception:  # a figure must not cost the study its results table
            log.exception("search report failed")
    mark_failed_runs(client, [t["run_id"] for t in trials
                              if t["status"] == "error" and t["run_id"]])
    info = {"wall time": f"{time.time() - t0:.0f} s" + (" (resumed run)" if resume else ""),
            "MLflow parent run": f"`{parent}` ({uri})", **(header or {})}
    return _report(study, trials, client, parent, os.path.join(results_dir, f"{study.name}.md"),
                   info)


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


def _report(study: Study, trials: list[dict], client, parent: str, path: str,
            info: dict[str, str]) -> StudyResult:
    """Write results/<study>.md (header: the study's facts, then `info`), log it and best.json to
    the parent run, and end that run."""
    done = [t for t in trials if t["status"] != "error" and study.metric in t["metrics"]]
    best = None
    if done:
        sign = 1 if study.mode == "max" else -1
        best = max(done, key=lambda t: sign * t["metrics"][study.metric])
    rows = summarize_rows(study, trials)
    header = {"study": study.name, "command": "`" + " ".join(["python", *sys.argv]) + "`",
              "method": study.base.method, "dataset": study.base.data.dataset,
              "seeds": ", ".join(map(str, study.seeds)), "hardware": hardware_summary(),
              "kdray commit": git_short_sha(), "metric": f"{study.metric} ({study.mode})",
              **info}
    text = write_results_md(study, rows, path, header=header)
    client.log_text(parent, text, f"results/{study.name}.md")
    if best is not None:
        client.log_dict(parent, {k: best[k] for k in ("name", "label", "seed", "params",
                                                      "metrics", "config")}, "best.json")
    client.set_terminated(parent, "FINISHED")
    print(text)
    return StudyResult(rows, parent, path, best)


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
