"""`run_study`: Ray Tune over a Study — grid over ablation rows x seeds (reported on the rows'
split, normally test), then an Optuna TPE (or random) search with ASHA scored, stopped and
selected on val only, then the val-selected point trained with the study's seeds and reported on
the rows' split — with one MLflow parent run and `results/<study>.md`."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from kdray.runtime.trial import TRIAL_SLOT, trainable, trial_resources
from kdray.search import Choice, Domain, Float, Int
from kdray.study.spec import BEST_LABEL, ROW_KEY, SEED_KEY, Study, trial_name

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    rows: list[dict[str, Any]]
    parent_run_id: str
    results_path: str
    best: dict[str, Any] | None


def _run_phase(study: Study, phase: str, param_space: dict, *, search: str, num_samples: int,
               scheduler: bool, storage_path: str, tracking: dict, resume: bool,
               callbacks: list | None = None, searcher=None, guard=None) -> list[dict]:
    """One Tuner over `param_space` (the grid of rows x seeds, the searched space, or the
    val-selected point x seeds); returns one dict per trial, in row order. Only the search phase
    gives Tune a metric (`study.select_key`, val): grid and best phases are not ranked by Tune.
    `searcher`: the OptunaSearch to use (search="optuna"). `guard`: the study's StudyGuard
    (kdray.runtime.interrupts): no phase starts after a Ctrl-C, and the trials it interrupted
    are marked `interrupted`."""
    import ray
    from ray import tune

    from kdray.runtime.interrupt_watch import InterruptWatch

    if guard is not None:
        if guard.interrupted:
            log.info("%s: not started (study interrupted)", phase)
            return []
        guard.start_phase(phase)

    slot = ray.cluster_resources().get(TRIAL_SLOT, 0) > 0
    tune_fn = tune.with_resources(trainable(study, phase, storage_path, tracking),
                                  trial_resources(study, slot))
    seen: dict[str, int] = {}

    def index(trial_id: str) -> int:
        """Grid trial ids end in a counter ("..._00003"); searcher trial ids are random hex."""
        tail = str(trial_id).split("_")[-1]
        return int(tail) if tail.isdigit() else seen.setdefault(str(trial_id), len(seen))

    path = os.path.join(storage_path, f"{study.name}-{phase}")
    if resume and tune.Tuner.can_restore(path):
        log.info("restoring %s", path)
        tuner = tune.Tuner.restore(path, trainable=tune_fn, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    elif num_samples < 1:
        log.info("%s: no samples left to run", path)
        return []
    else:
        from kdray.runtime import console

        shown = console.active()  # kdray's console: one line per trial epoch (driver-side)
        run_cfg = tune.RunConfig(name=f"{study.name}-{phase}", storage_path=storage_path,
                                 failure_config=tune.FailureConfig(max_failures=0),
                                 verbose=console.tune_verbose(),
                                 callbacks=[*(callbacks or []), InterruptWatch(),  # Tune appends
                                            *([shown.callback(phase, index)] if shown else [])])
        tuner = tune.Tuner(tune_fn, param_space=param_space, run_config=run_cfg,
                           tune_config=_tune_config(study, search, num_samples, scheduler, index,
                                                    ranked=phase == "search",
                                                    searcher=searcher))
    grid = tuner.fit()
    if guard is not None:
        guard.rearm()
    # trial ids also for trials that never reported (failed or interrupted before an epoch)
    ids = [t.trial_id for t in getattr(getattr(grid, "_experiment_analysis", None), "trials", [])]
    out = [_trial_record(study, phase, res, index, ids[i] if len(ids) == len(grid) else None)
           for i, res in enumerate(grid)]
    if guard is not None and guard.interrupted:
        guard.mark_records(out)
    from kdray.runtime import console

    if (shown := console.active()) is not None:  # a restored phase that was already over
        shown.lines(shown.progress.settle(phase, [(r["trial_id"], r["name"]) for r in out
                                                  if r["status"] != "interrupted"]))
    if scheduler:  # per-epoch metric, for the search report's ASHA rung table
        from kdray.runtime.search_report import epoch_history

        for rec, res in zip(out, grid):
            rec["history"] = epoch_history(res, study.select_key)
    order = {r.label: i for i, r in enumerate(study.rows)}
    return sorted(out, key=lambda t: (order.get(t["label"], len(order)), str(t["seed"]), t["name"]))


def _tune_config(study: Study, search: str, num_samples: int, scheduler: bool, index,
                 ranked: bool = False, searcher=None):
    """TuneConfig: Optuna TPE (or none), ASHA on epochs (or none), as many concurrent trials as
    the cluster's CPUs/GPUs fit, trial names from the row, sample index and seed. `ranked`: Tune
    gets the metric `study.select_key` (val); otherwise none (grid rows are not ranked)."""
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
    # a finished one-worker trial leaves its process (torch, kdray and the data imported) to the
    # next trial; not under ASHA, which may stop a trial mid-epoch (docs/runtime.md §13)
    from kdray.runtime.driver import one_process

    reuse = one_process(study.base) and sched is None
    return tune.TuneConfig(
        metric=study.select_key if ranked else None, mode=study.mode if ranked else None,
        search_alg=search_alg, scheduler=sched, reuse_actors=reuse,
        num_samples=num_samples, max_concurrent_trials=slots,
        trial_name_creator=lambda t: trial_name(t.config, index(t.trial_id)),
        trial_dirname_creator=lambda t: trial_name(t.config, index(t.trial_id)))


def _trial_record(study: Study, phase: str, res, index, trial_id: str | None = None
                  ) -> dict[str, Any]:
    """A Tune result as the plain dict the results table and best.json are made from."""
    from kdray.runtime.failures import reason

    m = dict(res.metrics or {})
    params = dict(res.config or {})
    trial_id = trial_id or m.get("trial_id", "")
    epochs = study.trial_epochs(params)  # a row may set its own (a compute-matched baseline)
    status = "error" if res.error else ("finished" if m.get("epoch") == epochs else "stopped")
    label = BEST_LABEL if phase == "best" else params.get(ROW_KEY, phase)
    return {"name": trial_name(params, index(trial_id)),
            "label": label, "seed": params.get(SEED_KEY, study.base.seed),
            "params": {k: v for k, v in params.items() if k not in (ROW_KEY, SEED_KEY)},
            "metrics": m, "status": status, "error": reason(res.error) if res.error else None,
            "trial_id": trial_id, "run_key": f"{study.name}/{phase}/{trial_id}",
            "config": study.trial_config(params).to_dict(),
            "paper": study.row(label).paper if ROW_KEY in params else ""}


def run_study(study: Study, *, address: str | None = None, storage_path: str | None = None,
              tracking_uri: str | None = None, experiment: str | None = None,
              resume: bool = False, results_dir: str = "results", header: dict | None = None,
              search_row: str | None = None, callbacks: list | None = None,
              optuna_storage: str | None = None, started: float | None = None) -> StudyResult:
    """Run the study's ablation grid (rows x seeds, on the rows' split), then its search (if it
    has a space) on val only, then the val-selected point with the study's seeds on the rows'
    split (the row `BEST_LABEL`). best.json: the val-selected searched trial and its val score.

    Every config is validated and its data and checkpoints are checked before Ray starts.
    `search_row` names the row whose overrides the search starts from (default: the last row).
    `callbacks`: ray.tune Callbacks given to every phase's Tuner (e.g. to record results).
    `optuna_storage`: where the search's Optuna study is kept (kdray.runtime.search_report).
    """
    from kdray.runtime import interrupts as I
    from kdray.runtime import study_report as R
    from kdray.runtime.session import check_study, ensure_ray

    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or os.path.abspath(
        "ray_results")
    study = check_study(study, search_row, address=address, storage_path=storage_path,
                        tracking_uri=tracking_uri, results_dir=results_dir)
    client, exp_id, parent, tracking = R.open_study_run(study, tracking_uri, experiment, resume)
    osetup = _open_optuna(study, tracking["uri"], optuna_storage, resume, storage_path)
    client.set_tag(parent, I.TAG_STATUS, "running")
    with I.StudyGuard() as guard:  # Ctrl-C: stop every phase, then finalise the records
        ensure_ray(address)
        t0 = started or time.time()
        phase = partial(_run_phase, storage_path=storage_path, tracking=tracking, resume=resume,
                        callbacks=callbacks, guard=guard)
        trials = _grid_phase(study, phase)
        searched, best = _search_phases(study, phase, osetup, search_row, trials)
        if guard.interrupted:
            I.release_placement_groups()
        R.attach_runs(client, exp_id, trials)
        if study.space and not guard.interrupted:
            header = R.search_report(study, client, parent, searched, results_dir,
                                     {k: to_tune(d) for k, d in study.space.items()}, osetup,
                                     header)
        I.close_runs(client, exp_id, parent, trials)
        info = {"wall time": R.wall_time(client, parent, time.time() - t0, resume),
                "MLflow parent run": f"`{parent}` ({R.portable_uri(tracking['uri'])})",
                **(header or {})}
        if guard.interrupted:
            info = {"status": f"**interrupted** (Ctrl-C in the {guard.phase} phase); not final: "
                              "continue with --resume", **info}
        rows, path = R.report(study, trials, best, client, parent,
                              os.path.join(results_dir, f"{study.name}.md"), info,
                              interrupted=guard.interrupted)
    if guard.interrupted:
        raise I.StudyInterrupted(guard.phase, path)
    return StudyResult(rows, parent, path, best)


def _open_optuna(study: Study, uri: str, optuna_storage: str | None, resume: bool,
                 storage_path: str):
    """The search's OptunaSearch on its stored study, opened before any trial runs (None
    without an Optuna search)."""
    if not (study.space and study.search == "optuna"):
        return None
    from ray import tune

    from kdray.runtime import optuna_store as sr

    return sr.optuna_search(
        study.name, metric=study.select_key, mode=study.mode, seed=study.search_seed,
        num_samples=study.num_samples, resume=resume,
        storage_url=sr.optuna_storage_url(uri, optuna_storage),
        tune_restores=resume and tune.Tuner.can_restore(
            os.path.join(storage_path, f"{study.name}-search")))


def _grid_phase(study: Study, phase) -> list[dict]:
    """The ablation rows x seeds (or the seeds alone for a study without rows or space)."""
    if not (study.rows or not study.space):
        return []
    space: dict[str, Any] = {SEED_KEY: _grid(study.seeds)}
    if study.rows:
        space[ROW_KEY] = _grid([r.label for r in study.rows])
    return phase(study, "grid", space, search="grid", num_samples=1, scheduler=False)


def _search_phases(study: Study, phase, osetup, search_row: str | None,
                   trials: list[dict]) -> tuple[list[dict], dict | None]:
    """The search on val, then the val-selected point with every seed on the rows' split;
    appends their trials to `trials`; returns (searched trials, the val-selected one)."""
    if not study.space:
        return [], None
    sstudy = replace(study, base=study.search_base(search_row))
    searched = phase(sstudy, "search", {k: to_tune(d) for k, d in study.space.items()},
                     search=study.search,
                     num_samples=osetup.num_samples if osetup else study.num_samples,
                     scheduler=study.scheduler == "asha",
                     searcher=osetup.searcher if osetup else None)
    trials += searched
    best = study.searched_best(searched)
    if best is not None:
        fstudy = replace(study, base=study.report_base(search_row))
        trials += phase(fstudy, "best", {**best["params"], SEED_KEY: _grid(study.seeds)},
                        search="grid", num_samples=1, scheduler=False)
    return searched, best


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


