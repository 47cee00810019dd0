"""`run_study`: Ray Tune over a Study — grid over ablation rows x seeds, then an Optuna TPE (or
random) search with ASHA — with one MLflow parent run and `results/<study>.md`."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from kdray.runtime.study import ROW_KEY, SEED_KEY, Study, to_tune, trial_name, write_results_md

log = logging.getLogger(__name__)
TRIAL_SLOT = "kd_trial_slot"  # custom resource: only on-demand nodes host trial drivers


@dataclass
class StudyResult:
    rows: list[dict[str, Any]]
    parent_run_id: str
    results_path: str
    best: dict[str, Any] | None


def with_resources(study: Study, *, workers_per_trial: int | None = None,
                   gpus_per_worker: float | None = None, cpus_per_worker: int | None = None,
                   num_samples: int | None = None, seeds: tuple[int, ...] | None = None) -> Study:
    """The study with command-line resource/sample overrides applied to its base config."""
    over: dict[str, Any] = {}
    if workers_per_trial is not None:
        over["resources.num_workers"] = workers_per_trial
    if gpus_per_worker is not None:
        over["resources.gpus_per_worker"] = gpus_per_worker
    if cpus_per_worker is not None:
        over["resources.cpus_per_worker"] = cpus_per_worker
    s = replace(study, base=study.base.override(over)) if over else study
    if num_samples is not None:
        s = replace(s, num_samples=num_samples)
    if seeds is not None:
        s = replace(s, seeds=tuple(seeds))
    return s


def _trainable(study: Study, phase: str, storage_path: str, tracking: dict[str, Any]):
    def run_trial(params: dict[str, Any]) -> None:
        from ray import tune

        from kdray.runtime.fit import make_trainer

        ctx = tune.get_context()
        cfg = study.trial_config(params)
        name = ctx.get_trial_name()
        tr = dict(tracking, run_key=f"{study.name}/{phase}/{ctx.get_trial_id()}", run_name=name)
        make_trainer(cfg, run_name=f"{study.name}-{phase}-{ctx.get_trial_id()}",
                     storage_path=storage_path, tracking=tr, in_tune=True).fit()
        log.info("trial %s finished", name)

    return run_trial


def _run_phase(study: Study, phase: str, param_space: dict, *, search: str, num_samples: int,
               scheduler: bool, storage_path: str, tracking: dict, resume: bool) -> list[dict]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from kdray.runtime.session import cluster_slots

    r = study.base.resources
    trial_res: dict[str, float] = {"cpu": 0, "memory": 256 * 1024**2}  # pitfalls.md P3
    if ray.cluster_resources().get(TRIAL_SLOT, 0) > 0:
        trial_res = {"cpu": 0, TRIAL_SLOT: 1}
    trainable = tune.with_resources(_trainable(study, phase, storage_path, tracking), trial_res)
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=study.search_seed)
    sched = None
    if scheduler:
        sched = ASHAScheduler(time_attr="epoch", max_t=study.base.train.epochs,
                              grace_period=study.grace_period,
                              reduction_factor=study.reduction_factor)
    slots = cluster_slots(r.num_workers * r.cpus_per_worker, r.num_workers * r.gpus_per_worker)
    seen: dict[str, int] = {}

    def index(trial_id: str) -> int:
        """Grid trial ids end in a counter ("..._00003"); searcher trial ids are random hex."""
        tail = str(trial_id).split("_")[-1]
        return int(tail) if tail.isdigit() else seen.setdefault(str(trial_id), len(seen))

    tune_cfg = tune.TuneConfig(
        metric=study.metric, mode=study.mode, search_alg=search_alg, scheduler=sched,
        num_samples=num_samples, max_concurrent_trials=slots,
        trial_name_creator=lambda t: trial_name(t.config, index(t.trial_id)),
        trial_dirname_creator=lambda t: trial_name(t.config, index(t.trial_id)))
    run_cfg = tune.RunConfig(name=f"{study.name}-{phase}", storage_path=storage_path,
                             failure_config=tune.FailureConfig(max_failures=0), verbose=1)
    path = os.path.join(storage_path, f"{study.name}-{phase}")
    if resume and tune.Tuner.can_restore(path):
        log.info("restoring %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_cfg,
                           run_config=run_cfg)
    grid = tuner.fit()
    out = []
    order = {r.label: i for i, r in enumerate(study.rows)}
    for res in grid:
        m = dict(res.metrics or {})
        params = dict(res.config or {})
        trial_id = m.get("trial_id", "")
        status = "error" if res.error else ("finished" if m.get("epoch") == study.base.train.epochs
                                            else "stopped")
        label = params.get(ROW_KEY, phase)
        out.append({"name": trial_name(params, index(trial_id)),
                    "label": label, "seed": params.get(SEED_KEY, study.base.seed),
                    "params": {k: v for k, v in params.items() if k not in (ROW_KEY, SEED_KEY)},
                    "metrics": m, "status": status, "error": repr(res.error) if res.error else None,
                    "run_key": f"{study.name}/{phase}/{trial_id}",
                    "config": study.trial_config(params).to_dict(),
                    "paper": study.row(label).paper if ROW_KEY in params else ""})
    return sorted(out, key=lambda t: (order.get(t["label"], len(order)), str(t["seed"]), t["name"]))


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
              search_row: str | None = None) -> StudyResult:
    """Run the study's ablation grid (rows x seeds) and then its search (if it has a space).

    Every config is validated and its data and checkpoints are checked before Ray starts.
    `search_row` names the row whose overrides the search starts from (default: the last row).
    """
    import mlflow

    from kdray.runtime.session import ensure_ray, preflight, resolve_paths
    from kdray.runtime.tracking import (
        default_tracking_uri,
        get_or_create_experiment,
        start_study_run,
    )

    study = replace(study, base=resolve_paths(study.base))
    configs = study.validate(search_row)
    seen = set()
    for c in configs:
        key = (c.method, c.data.dataset, c.model, c.train.init_from)
        if key not in seen:
            seen.add(key)
            preflight(c)
    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or os.path.abspath(
        "ray_results")
    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, experiment or study.name)
    parent = start_study_run(uri, exp_id, study.name, params=study.base.flatten(),
                             tags={"kdray.metric": study.metric}, resume=resume)
    tracking = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent}
    ensure_ray(address)
    t0 = time.time()
    trials: list[dict] = []
    if study.rows or not study.space:
        space: dict[str, Any] = {SEED_KEY: _grid(study.seeds)}
        if study.rows:
            space[ROW_KEY] = _grid([r.label for r in study.rows])
        trials += _run_phase(study, "grid", space, search="grid", num_samples=1, scheduler=False,
                             storage_path=storage_path, tracking=tracking, resume=resume)
    if study.space:
        sstudy = replace(study, base=study.search_base(search_row))
        space = {k: to_tune(d) for k, d in study.space.items()}
        trials += _run_phase(sstudy, "search", space, search=study.search,
                             num_samples=study.num_samples, scheduler=study.scheduler == "asha",
                             storage_path=storage_path, tracking=tracking, resume=resume)
    ids = runs_by_key(client, exp_id, [t["run_key"] for t in trials])
    for t in trials:
        t["run_id"] = ids.get(t["run_key"])
    mark_failed_runs(client, [t["run_id"] for t in trials if t["status"] == "error" and t["run_id"]])
    done = [t for t in trials if t["status"] != "error" and study.metric in t["metrics"]]
    best = None
    if done:
        sign = 1 if study.mode == "max" else -1
        best = max(done, key=lambda t: sign * t["metrics"][study.metric])
    from kdray.runtime.study import summarize_rows

    rows = summarize_rows(study, trials)
    info = {"study": study.name, "command": "`" + " ".join(["python", *sys.argv]) + "`",
            "method": study.base.method, "dataset": study.base.data.dataset,
            "seeds": ", ".join(map(str, study.seeds)), "hardware": hardware_summary(),
            "kdray commit": _git_sha(), "metric": f"{study.metric} ({study.mode})",
            "wall time": f"{time.time() - t0:.0f} s" + (" (resumed run)" if resume else ""),
            "MLflow parent run": f"`{parent}` ({uri})", **(header or {})}
    path = os.path.join(results_dir, f"{study.name}.md")
    text = write_results_md(study, rows, path, header=info)
    client.log_text(parent, text, f"results/{study.name}.md")
    if best is not None:
        client.log_dict(parent, {k: best[k] for k in ("name", "label", "seed", "params",
                                                      "metrics", "config")}, "best.json")
    client.set_terminated(parent, "FINISHED")
    print(text)
    return StudyResult(rows, parent, path, best)


def hardware_summary() -> str:
    """Where the study's driver ran, e.g. "2 CPU cores (x86_64), no GPU" (trials may run elsewhere)."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpu = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}"


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=os.path.dirname(__file__))
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _grid(values):
    from ray import tune

    return tune.grid_search(list(values))
