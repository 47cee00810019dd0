"""`fit(cfg)`: one training run as a Ray Train V2 TorchTrainer with DDP over N workers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from kdray.config import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    mlflow_run_id: str | None
    checkpoint_path: str | None
    error: BaseException | None = None


def make_trainer(cfg: ExperimentConfig, *, run_name: str, storage_path: str,
                 tracking: dict[str, Any] | None, in_tune: bool = False,
                 fault: dict | None = None):
    """The TorchTrainer for one run (built inside a Tune trial or directly)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

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
    loop_config = {"cfg": cfg.to_dict(), "tracking": tracking, "run_name": run_name,
                   "storage_path": storage_path}
    if fault:
        loop_config["_fault"] = fault
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
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
        parent_run_id: str | None = None, fault: dict | None = None,
        raise_on_error: bool = True) -> RunResult:
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
        fault: test hook {"epoch", "rank", "marker"}: SIGKILL one worker once.
    """
    import mlflow

    from kdray.runtime.session import ensure_ray, preflight, resolve_paths
    from kdray.runtime.tracking import default_tracking_uri, get_or_create_experiment

    cfg = resolve_paths(cfg)  # workers may run in another directory
    preflight(cfg)  # before any Ray resource starts
    run_name = run_name or cfg.name
    storage_path = storage_path or os.environ.get("KDRAY_STORAGE_PATH")
    storage_path = os.path.abspath(storage_path or "ray_results") if "://" not in (
        storage_path or "") else storage_path
    uri = tracking_uri or default_tracking_uri()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, experiment)
    tracking = {"uri": uri, "experiment_id": exp_id, "parent_run_id": parent_run_id,
                "run_key": f"fit/{run_name}"}
    ensure_ray(address)
    trainer = make_trainer(cfg, run_name=run_name, storage_path=storage_path, tracking=tracking,
                           fault=fault)
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError: the run's MLflow record is already marked
        if raise_on_error:
            raise
        return RunResult({}, [], None, None, error=e)
    ret = result.return_value or {}
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    return RunResult(ret.get("metrics", {}), ret.get("history", []), ret.get("mlflow_run_id"), ckpt,
                     result.error)
