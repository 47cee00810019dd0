"""The driver: `fit(cfg)`, one training run as a Ray Train V2 TorchTrainer with DDP over N
workers (one worker with local storage: one Ray task running the same worker body, without
Train's controller, worker group and process group; docs/runtime.md §13), and `run_stage`, a `fit` that later trials depend on (a teacher, a phase-1 model), run
once and reused: its checkpoint path and metrics are recorded in `<storage>/stages/<name>.json`."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kdray.checkpoint import CKPT_NAME
from kdray.config import ExperimentConfig
from kdray.runtime.run_identity import claim_run, config_hash

if TYPE_CHECKING:
    from kdray.study.spec import Study

#: called at the start of every epoch on every worker as `hook(epoch, rank)`; shipped to the
#: workers by value (cloudpickle), e.g. a test's fault injection
EpochHook = Callable[[int, int], None]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    mlflow_run_id: str | None
    checkpoint_path: str | None
    error: BaseException | None = None


def loop_config(cfg: ExperimentConfig, tracking: dict[str, Any] | None, run_name: str,
                storage_path: str, epoch_hooks: Sequence[EpochHook] = ()) -> dict[str, Any]:
    """What every worker entry point (`kdray.runtime.worker`) gets: the config as a dict, the
    MLflow coordinates, the run name, the storage path and the epoch hooks, if any."""
    config: dict[str, Any] = {"cfg": cfg.to_dict(), "tracking": tracking, "run_name": run_name,
                              "storage_path": storage_path}
    if epoch_hooks:
        config["epoch_hooks"] = list(epoch_hooks)
    return config


def make_trainer(cfg: ExperimentConfig, *, run_name: str, storage_path: str,
                 tracking: dict[str, Any] | None, in_tune: bool = False,
                 epoch_hooks: Sequence[EpochHook] = ()):
    """The TorchTrainer for one run (built inside a Tune trial or directly)."""
    import ray.train
    from ray.train.torch import TorchConfig

    from kdray.runtime.interrupts import trainer_class
    from kdray.runtime.worker import train_fn_per_worker

    r = cfg.resources
    use_gpu = r.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    return trainer_class()(  # TorchTrainer that does not retry deterministic errors
        train_fn_per_worker,
        train_loop_config=loop_config(cfg, tracking, run_name, storage_path, epoch_hooks),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker,
                                               placement_strategy=r.placement),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
    )


def fit(cfg: ExperimentConfig, *, run_name: str | None = None, storage_path: str | None = None,
        tracking_uri: str | None = None, experiment: str = "kdray", address: str | None = None,
        parent_run_id: str | None = None, epoch_hooks: Sequence[EpochHook] = (),
        raise_on_error: bool = True, fresh: bool = False, mlflow_name: str | None = None,
        tags: dict[str, str] | None = None) -> RunResult:
    """Train `cfg` as one Ray Train run. Re-running with the same `run_name` and `storage_path`
    resumes from that run's last checkpoint.

    Args:
        cfg: the experiment.
        run_name: Train run name (default: cfg.name); stable names make runs resumable.
        storage_path: Train storage (local dir, s3://, or NFS path); default ./ray_results.
        tracking_uri: MLflow store; default sqlite:///<cwd>/mlflow.db.
        experiment: MLflow experiment name.
        address: Ray address (None/"local" = start a local instance in-process).
        parent_run_id: optional MLflow parent run.
        epoch_hooks: `hook(epoch, rank)` calls at every epoch start on every worker.
        fresh: discard a stored run of the same name (its checkpoints) and start afresh.
        mlflow_name, tags: the MLflow run's display name (default: run_name) and extra tags.

    Raises:
        ConfigError: the config fails a pre-flight check, or `run_name` exists in `storage_path`
            with another config (see `claim_run`).
    """
    import mlflow

    from kdray.engine.preflight import check_locations
    from kdray.runtime.mlflow_store import default_tracking_uri, get_or_create_experiment
    from kdray.runtime.session import ensure_ray, preflight, resolve_paths

    cfg = resolve_paths(cfg)  # workers may run in another directory
    preflight(cfg, address=address)  # before any Ray resource starts
    run_name = run_name or cfg.name
    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH")
    storage_path = os.path.abspath(storage_path or "ray_results") if "://" not in (
        storage_path or "") else storage_path
    uri = tracking_uri or default_tracking_uri()
    check_locations(storage_path=storage_path, tracking_uri=uri)
    identity = claim_run(cfg, storage_path, run_name, fresh=fresh)
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, experiment)
    tracking = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent_run_id,
                "run_key": f"fit/{run_name}" + (f"@{identity}" if identity else ""),
                "run_name": mlflow_name, "tags": tags}
    ensure_ray(address)
    if one_process(cfg, storage_path):
        return _fit_one_process(cfg, run_name, storage_path, tracking, epoch_hooks,
                                raise_on_error, client, exp_id)
    trainer = make_trainer(cfg, run_name=run_name, storage_path=storage_path, tracking=tracking,
                           epoch_hooks=epoch_hooks)
    from kdray.runtime import interrupts as I

    I.train_interrupted(reset=True)
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    error: Exception | None = None
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError: the run's MLflow record is already marked
        error = e
    finally:
        if main_thread:  # Ray Train leaves its SIGINT handler installed
            signal.signal(signal.SIGINT, handler)
    if I.train_interrupted():  # Ctrl-C: the workers were stopped; the record says so
        raise I.run_interrupted(client, exp_id, tracking["run_key"], run_name)
    if error is not None:
        if raise_on_error:
            raise error
        return RunResult({}, [], None, None, error=error)
    ret = result.return_value or {}
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    return RunResult(ret.get("metrics", {}), ret.get("history", []), ret.get("mlflow_run_id"), ckpt,
                     result.error)


def one_process(cfg: ExperimentConfig, storage_path: str | None = None) -> bool:
    """Does this run train in one process (no Train controller, docs/runtime.md §13)? One
    worker, and for a `fit` local storage (its checkpoints are plain folders)."""
    return cfg.resources.num_workers == 1 and "://" not in (storage_path or "")


def _fit_one_process(cfg: ExperimentConfig, run_name: str, storage_path: str,
                     tracking: dict[str, Any], epoch_hooks: Sequence[EpochHook],
                     raise_on_error: bool, client, exp_id: str) -> RunResult:
    """A one-worker `fit`: one Ray task runs the worker body with checkpoints in
    `<storage_path>/<run_name>/checkpoint_<epoch>/`. An error that is not deterministic is
    retried inside the task, a lost task process by Ray, each `resources.max_failures` times,
    from the newest checkpoint; re-running the same name resumes there too. Ctrl-C cancels the
    task and closes the run's record as interrupted."""
    import ray

    from kdray.runtime import interrupts as I
    from kdray.runtime.worker import train_fn_local

    r = cfg.resources
    task = ray.remote(train_fn_local).options(
        num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker, max_retries=r.max_failures,
        retry_exceptions=False, name=f"kdray-fit-{run_name}")
    ref = task.remote(loop_config(cfg, tracking, run_name, storage_path, epoch_hooks),
                      os.path.join(storage_path, run_name), cfg.train.keep_checkpoints)
    try:
        ret = ray.get(ref)
    except KeyboardInterrupt:
        print("\n[kdray] Ctrl-C: stopping this training run; its last checkpoint is kept and "
              "the same command continues it.", flush=True)
        ray.cancel(ref, force=True)
        raise I.run_interrupted(client, exp_id, tracking["run_key"], run_name) from None
    except Exception as e:  # the run's MLflow record is already marked
        if raise_on_error:
            raise
        return RunResult({}, [], None, None, error=e)
    return RunResult(ret.get("metrics", {}), ret.get("history", []), ret.get("mlflow_run_id"),
                     ret.get("checkpoint_path"))


@dataclass
class StageResult:
    checkpoint: str          # path of checkpoint.pt
    metrics: dict[str, float]
    mlflow_run_id: str | None
    reused: bool


def run_stage(cfg: ExperimentConfig, name: str, *, storage_path: str | None = None,
              tracking_uri: str | None = None, experiment: str = "kdray",
              address: str | None = None, parent_run_id: str | None = None,
              label: str | None = None) -> StageResult:
    """Train `cfg` as stage `name` unless a finished record of the same config exists. Its
    MLflow run is "stage · <label>" (default: name), tagged kdray.phase=stage, under
    `parent_run_id` when given."""
    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or "ray_results"
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)
    # the record sits beside local storage; with remote storage (s3://) it stays in ./.kdray/
    base = storage_path if "://" not in storage_path else os.path.abspath(".kdray")
    record = os.path.join(base, "stages", f"{name}.json")
    if os.path.isfile(record):
        with open(record) as f:
            rec = json.load(f)
        if rec.get("config") == cfg.to_dict() and os.path.isfile(rec["checkpoint"]):
            log.info("stage %s: reusing %s", name, rec["checkpoint"])
            _stage_done(name, True, rec["checkpoint"])
            return StageResult(rec["checkpoint"], rec["metrics"], rec.get("mlflow_run_id"), True)
    # The run folder is keyed by the config: an interrupted stage resumes its own checkpoints,
    # a stage whose config changed starts afresh instead of resuming the old run's.
    run_name = f"{name}-{config_hash(cfg)}"
    print(f"[kdray] stage {name}: training {cfg.method} {cfg.model.arch} on {cfg.data.dataset} "
          f"for {cfg.train.epochs} epochs ({run_name})")
    from kdray.runtime.console import stage_lines
    from kdray.study.progress import run_name as display_name
    from kdray.study.progress import run_tags

    with stage_lines(label or name):
        res = fit(cfg, run_name=run_name, storage_path=storage_path, tracking_uri=tracking_uri,
                  experiment=experiment, address=address, parent_run_id=parent_run_id,
                  mlflow_name=display_name("stage", {"name": label or name}),
                  tags=run_tags("stage", {"row": f"stage · {label or name}"}, cfg))
    ckpt = os.path.join(res.checkpoint_path, CKPT_NAME)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record, "w") as f:
        json.dump({"checkpoint": ckpt, "metrics": res.metrics, "config": cfg.to_dict(),
                   "mlflow_run_id": res.mlflow_run_id}, f, indent=2)
    _stage_done(name, False, ckpt)
    return StageResult(ckpt, res.metrics, res.mlflow_run_id, False)


def _stage_done(name: str, reused: bool, checkpoint: str) -> None:
    from kdray.runtime import console

    shown = console.active()
    if shown is not None:
        shown.stage(name, reused=reused, summary=os.path.relpath(checkpoint))
    else:
        print(f"[kdray] stage {name}: {'reusing' if reused else 'trained'} {checkpoint}")


def study_stage(study: Study, args: Any, cfg: ExperimentConfig, suffix: str) -> StageResult:
    """`run_stage` from a study's `before` hook: stage "<study>-<suffix>", tracked in the study's
    MLflow experiment, stored and run where the study's flags (`args`) say; `cfg` as
    `Study.stage_config` makes it (the carved val left out when the study searches). Its MLflow
    run is nested under the study's run (opened here; run_study finds it again)."""
    import mlflow

    from kdray.runtime import interrupts as I
    from kdray.runtime.mlflow_store import default_tracking_uri, get_or_create_experiment
    from kdray.runtime.tracking import start_study_run

    uri = args.tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, study.name)
    parent = start_study_run(uri, exp_id, study.name, resume=getattr(args, "resume", False))
    try:
        return run_stage(study.stage_config(cfg), f"{study.name}-{suffix}",
                         storage_path=args.storage_path, tracking_uri=uri, experiment=study.name,
                         address=args.address, parent_run_id=parent, label=suffix)
    except I.RunInterrupted as e:  # Ctrl-C in the stage: the study ends here, records final
        I.end_parent(client, parent, interrupted=True)
        raise I.StudyInterrupted(f"stage {suffix!r}", None) from e
