"""Ray Train worker: rebuilds the config, runs the engine, reports per epoch, logs rank-0 MLflow.

The only file that sees `ray.train` inside a worker. It knows no method by name.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from typing import Any

import ray
import ray.train
import torch

from kdray.checkpoint import CKPT_NAME, load_checkpoint, save_checkpoint
from kdray.config import ExperimentConfig
from kdray.dist import all_gather_object
from kdray.engine.loop import Callbacks, EpochEnd
from kdray.engine.runner import train
from kdray.runtime.tracking import TrialTracker

log = logging.getLogger(__name__)


def _maybe_inject_fault(spec: dict | None, epoch: int, rank: int) -> None:
    """Test hook: SIGKILL this worker once at the start of `spec['epoch']` on `spec['rank']`."""
    if not spec or epoch != spec["epoch"] or rank != spec["rank"]:
        return
    marker = spec["marker"]
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def _device(cfg: ExperimentConfig) -> torch.device:
    if cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available():
        return ray.train.torch.get_device()
    return torch.device("cpu")


def train_fn_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    cfg = ExperimentConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, cfg.resources.cpus_per_worker))
    tr = config.get("tracking") or {}
    tracker = TrialTracker(tr.get("uri"), tr.get("experiment_id"), tr.get("parent_run_id"),
                           run_key=tr.get("run_key", config.get("run_name", "run")),
                           run_name=tr.get("run_name") or config.get("run_name", "run"),
                           enabled=rank == 0 and bool(tr.get("uri")))
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_checkpoint(os.path.join(d, CKPT_NAME))
        log.info("rank %d resuming from %s at epoch %d", rank, ckpt.path, resume["epoch"])
    else:
        tracker.log_params(cfg.flatten())
        tracker.log_dict_json(cfg.to_dict(), "config.json")
        node = ray.get_runtime_context().get_node_id()
        tracker.log_environment({"world_size": world, "storage": config.get("storage_path"),
                                 "node_ids": all_gather_object(node)})
    tracker.set_tag("kdray.status", "running")
    fault = config.get("_fault")
    history: list[dict] = list(resume.get("history", [])) if resume else []
    last_ckpt_dir = tempfile.mkdtemp(prefix="kdray-ckpt-")
    last_records: dict[str, list[dict]] = {}

    def finish(e: EpochEnd | None) -> None:
        """Everything final is recorded before the last report: once Tune has seen the last
        epoch it may stop this process at any moment (ASHA, end of study, Ctrl-C)."""
        tracker.log_curves(history)
        if last_records.get("episodes"):
            tracker.log_episode_hist(last_records["episodes"])
        storage = str(config.get("storage_path") or "")
        if "://" in storage and not storage.startswith("file://"):
            tracker.set_tag("kdray.checkpoint_uri", f"{storage}/{config.get('run_name')}")
        else:
            tracker.log_file(os.path.join(last_ckpt_dir, CKPT_NAME), "checkpoint")
        tracker.set_tag("kdray.status", "finished")
        tracker.set_terminated("FINISHED")

    def on_epoch_end(e: EpochEnd) -> None:
        history.append(e.metrics)
        checkpoint = None
        if rank == 0:
            tracker.log_metrics(e.metrics, step=e.epoch + 1)
            if e.records:
                last_records.update(e.records)
                tracker.log_eval(e.records, {k: v for k, v in e.metrics.items()
                                             if k.startswith("val/")}, e.epoch + 1)
            save_checkpoint(e.make_state(), last_ckpt_dir)
            checkpoint = ray.train.Checkpoint.from_directory(last_ckpt_dir)
            if e.is_last:
                finish(e)
        # every rank reports exactly once per epoch (Ray's report is a barrier)
        ray.train.report({k: v for k, v in e.metrics.items()}, checkpoint=checkpoint)

    if resume is not None and resume["epoch"] >= cfg.train.epochs:
        # The run had finished, but its last report was not consumed before the interruption
        # (pitfalls P10): record the end and report the final metrics again, on every rank.
        if rank == 0:
            save_checkpoint(resume, last_ckpt_dir)
            finish(None)
        ray.train.report(dict(history[-1]), checkpoint=None)
        return {"metrics": history[-1], "mlflow_run_id": tracker.run_id, "history": history}

    callbacks = Callbacks(on_log=tracker.log_metrics, on_epoch_end=on_epoch_end,
                          on_epoch_start=lambda ep: _maybe_inject_fault(fault, ep, rank))
    try:
        result = train(cfg, callbacks=callbacks, resume=resume, device=_device(cfg))
    except KeyboardInterrupt:
        tracker.set_tag("kdray.status", "interrupted")
        tracker.set_terminated("KILLED")
        raise
    except BaseException:
        tracker.set_tag("kdray.status", "failed")
        tracker.set_terminated("FAILED")
        raise
    return {"metrics": result.metrics, "mlflow_run_id": tracker.run_id, "history": result.history}
