"""The training process of a run: rebuilds the config, runs the engine, reports per epoch, logs
rank-0 MLflow.

One body (`_run`) behind three entry points that differ only in their session
(`worker_sessions.py`: rank, the checkpoint to resume from, where a report goes, the device;
docs/runtime.md §13):

* `train_fn_per_worker`: one rank of a Ray Train TorchTrainer (DDP, N workers);
* `train_fn_single`: a whole one-worker run inside its Tune trial (no Train controller, worker
  group or process group), reports and checkpoints through Tune;
* `train_fn_local`: a whole one-worker `fit`, run as one Ray task, checkpoints as
  `<run folder>/checkpoint_<epoch>/`.

The one-process entry points retry a failure that is not deterministic (`failures.py`) in the
same process from the last checkpoint, `resources.max_failures` times, as Train's controller
would. With `worker_sessions.py`, the only code that sees `ray.train` / `ray.tune` inside a
worker. It knows no method or
task by name: the evaluator's tables reach MLflow through `TrialTracker.log_eval`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import ray
import torch

from kdray.checkpoint import CKPT_NAME, load_checkpoint, save_checkpoint
from kdray.config import ExperimentConfig
from kdray.dist import all_gather_object
from kdray.engine.loop import Callbacks, EpochEnd
from kdray.engine.runner import train
from kdray.runtime.failures import DeterministicError, count_attempt, record_failure
from kdray.runtime.metric_keys import epoch_metrics, step_metrics
from kdray.runtime.tracking import TrialTracker
from kdray.runtime.worker_sessions import FileSession, OneProcess, TrainSession, TuneSession

log = logging.getLogger(__name__)


def train_fn_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One DDP worker of a run: `config` holds the config dict, the MLflow coordinates
    (`tracking`), `run_name`, `storage_path` and optional `epoch_hooks` (`hook(epoch, rank)`)."""
    return _run(config, TrainSession())


def train_fn_single(config: dict[str, Any]) -> dict[str, Any]:
    """The whole run in this process: a one-worker Tune trial. `config` as for
    `train_fn_per_worker`."""
    return _with_retries(config, TuneSession())


def train_fn_local(config: dict[str, Any], run_dir: str, keep: int) -> dict[str, Any]:
    """The whole run in this process, checkpoints under `run_dir` (a one-worker `fit`); the
    result also names the newest checkpoint folder (`checkpoint_path`)."""
    session = FileSession(run_dir, keep)
    out = _with_retries(config, session)
    return {**out, "checkpoint_path": session.checkpoint()}


def _with_retries(config: dict[str, Any], session: OneProcess) -> dict[str, Any]:
    """`_run`, again from the last checkpoint after an error that is not deterministic, up to
    `resources.max_failures` times (what Train's controller does for a DDP run). A lost process
    is not seen here: a `fit` task is restarted by Ray, a trial by Tune."""
    retries = ExperimentConfig.from_dict(config["cfg"]).resources.max_failures
    attempt = 0
    while True:
        try:
            return _run(config, session)
        except DeterministicError:
            raise
        except Exception as e:
            if attempt == retries:
                raise
            attempt += 1
            log.warning("run %s failed (%s: %s); retry %d of %d from %s", config.get("run_name"),
                        type(e).__name__, e, attempt, retries,
                        session.checkpoint() or "the start")


def _run(config: dict[str, Any], session) -> dict[str, Any]:
    cfg = ExperimentConfig.from_dict(config["cfg"])
    rank, world = session.rank, session.world
    torch.set_num_threads(max(1, cfg.resources.cpus_per_worker))
    tracker = _tracker(config, rank)
    count_attempt(tracker)
    resume = _resume_state(session.checkpoint(), rank)
    if resume is None:
        tracker.log_params(cfg.flatten())
        tracker.log_dict_json(cfg.to_dict(), "config.json")
        node = ray.get_runtime_context().get_node_id()
        tracker.log_environment({"world_size": world, "storage": config.get("storage_path"),
                                 "node_ids": all_gather_object(node)})
    tracker.set_tag("kdray.status", "running")
    run = _Reporter(config, tracker, session, resume)
    if resume is not None and resume["epoch"] >= cfg.train.epochs:
        return run.report_finished(resume)
    hooks = list(config.get("epoch_hooks") or ())
    callbacks = Callbacks(on_log=lambda m, step: tracker.log_metrics(step_metrics(m), step),
                          on_epoch_end=run.on_epoch_end,
                          on_epoch_start=lambda ep: [h(ep, rank) for h in hooks])
    try:
        result = train(cfg, callbacks=callbacks, resume=resume, device=session.device(cfg))
    except KeyboardInterrupt:
        tracker.set_tag("kdray.status", "interrupted")
        tracker.set_terminated("KILLED")
        raise
    except Exception as e:  # recorded; a deterministic error is not retried (failures.py)
        err = record_failure(tracker, e, rank)
        if err is e:
            raise
        raise err from e
    except SystemExit:   # Tune ends a stopped trial's thread; its record is closed by the study
        raise
    except BaseException:
        tracker.set_tag("kdray.status", "failed")
        tracker.set_terminated("FAILED")
        raise
    return {"metrics": result.metrics, "mlflow_run_id": tracker.run_id, "history": result.history}


def _tracker(config: dict[str, Any], rank: int) -> TrialTracker:
    """The run's MLflow child run on rank 0 (found again on a restart); a no-op elsewhere."""
    tr = config.get("tracking") or {}
    return TrialTracker(tr.get("uri"), tr.get("experiment_id"), tr.get("parent_run_id"),
                        run_key=tr.get("run_key", config.get("run_name", "run")),
                        run_name=tr.get("run_name") or config.get("run_name", "run"),
                        enabled=rank == 0 and bool(tr.get("uri")), tags=tr.get("tags"))


def _resume_state(folder: str | None, rank: int) -> dict[str, Any] | None:
    """The state in checkpoint folder `folder` (the run's last checkpoint after a restart),
    else None."""
    if folder is None:
        return None
    state = load_checkpoint(os.path.join(folder, CKPT_NAME))
    log.info("rank %d resuming from %s at epoch %d", rank, folder, state["epoch"])
    return state


class _Reporter:
    """Per-epoch reporting of one worker: metrics, eval tables and checkpoints (rank 0) to MLflow
    and Ray, one report per epoch on every rank (Ray Train's report is a barrier)."""

    def __init__(self, config: dict[str, Any], tracker: TrialTracker, session,
                 resume: dict[str, Any] | None) -> None:
        self.config, self.tracker, self.session = config, tracker, session
        self.rank = session.rank
        self.history: list[dict] = list(resume.get("history", [])) if resume else []
        self.ckpt_dir = tempfile.mkdtemp(prefix="kdray-ckpt-")
        self.records: dict[str, list[dict]] = {}

    def finish(self) -> None:
        """Everything final is recorded before the last report: once Tune has seen the last
        epoch it may stop this process at any moment (ASHA, end of study, Ctrl-C)."""
        tr = self.tracker
        tr.log_curves(self.history)
        if self.records.get("episodes"):
            tr.log_episode_hist(self.records["episodes"])
        storage = str(self.config.get("storage_path") or "")
        if "://" in storage and not storage.startswith("file://"):
            tr.set_tag("kdray.checkpoint_uri", f"{storage}/{self.config.get('run_name')}")
        else:
            tr.log_file(os.path.join(self.ckpt_dir, CKPT_NAME), "checkpoint")
        tr.set_tag("kdray.status", "finished")
        tr.set_terminated("FINISHED")

    def on_epoch_end(self, e: EpochEnd) -> None:
        self.history.append(e.metrics)
        ckpt_dir = None
        if self.rank == 0:
            self.tracker.log_metrics(epoch_metrics(e.metrics), step=e.step or e.epoch + 1)
            if e.records:
                self.records.update(e.records)
                self.tracker.log_eval(e.records, {k: v for k, v in e.metrics.items()
                                                  if k.startswith(("val/", "test/"))}, e.epoch + 1)
            save_checkpoint(e.make_state(), self.ckpt_dir)
            ckpt_dir = self.ckpt_dir
            if e.is_last:
                self.finish()
        self.session.report(dict(e.metrics), ckpt_dir)

    def report_finished(self, resume: dict[str, Any]) -> dict[str, Any]:
        """The run had finished, but its last report was not consumed before the interruption
        (docs/runtime.md §P10): record the end and report the final metrics again, on every rank."""
        if self.rank == 0:
            save_checkpoint(resume, self.ckpt_dir)
            self.finish()
        self.session.report(dict(self.history[-1]), None)
        return {"metrics": self.history[-1], "mlflow_run_id": self.tracker.run_id,
                "history": self.history}
