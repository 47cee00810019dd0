"""Where a run's worker body reports and checkpoints (`kdray.runtime.worker`): a session gives
rank and world size, the checkpoint folder to resume from, `report(metrics, ckpt_dir)` and the
device. `TrainSession`: one rank of a Ray Train `TorchTrainer`. `TuneSession`: a one-worker Tune
trial. `FileSession`: a one-worker `fit` run as a Ray task (docs/runtime.md §13).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch

from kdray.config import ExperimentConfig


class TrainSession:
    """A Ray Train worker: rank and world from Train's context, Train checkpoints."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def checkpoint(self) -> str | None:
        """A folder holding the checkpoint to resume from (copied locally), else None."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return None if ckpt is None else ckpt.to_directory()

    def report(self, metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        import ray.train

        ckpt = None if ckpt_dir is None else ray.train.Checkpoint.from_directory(ckpt_dir)
        ray.train.report(metrics, checkpoint=ckpt)

    def device(self, cfg: ExperimentConfig) -> torch.device:
        if cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available():
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cpu")


def _log_to_stderr() -> None:
    """kdray's INFO lines (`epoch i/n ...`) on this process's stderr, which Ray forwards to the
    driver (a study's stage echo reads them there) — as Ray Train sets up for its workers; a
    plain Ray task or Tune trial logs only warnings. Once per process."""
    logger = logging.getLogger("kdray")
    if any(getattr(h, "_kdray_worker", False) for h in logger.handlers):
        return
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._kdray_worker = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class OneProcess:
    """Rank 0 of 1, the whole run in this process."""

    rank, world = 0, 1

    def __init__(self) -> None:
        _log_to_stderr()

    def device(self, cfg: ExperimentConfig) -> torch.device:
        if cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available():
            return torch.device("cuda", 0)   # Ray sets CUDA_VISIBLE_DEVICES to this run's GPU
        return torch.device("cpu")


class TuneSession(OneProcess):
    """A one-worker Tune trial: reports and checkpoints through Tune (which persists them and
    restores the trial from the last one after a preempted node). A retry in this process
    resumes from the last checkpoint it reported (`retry_from`)."""

    def __init__(self) -> None:
        super().__init__()
        self.retry_from: str | None = None

    def checkpoint(self) -> str | None:
        if self.retry_from:
            return self.retry_from
        from ray import tune

        ckpt = tune.get_checkpoint()
        return None if ckpt is None else ckpt.to_directory()

    def report(self, metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        from ray import tune

        ckpt = None if ckpt_dir is None else tune.Checkpoint.from_directory(ckpt_dir)
        tune.report(metrics, checkpoint=ckpt)
        if ckpt_dir is not None:
            self.retry_from = ckpt_dir


class FileSession(OneProcess):
    """A one-worker `fit` run as a Ray task: checkpoints as `<run_dir>/checkpoint_<epoch>/`
    (the newest `keep` kept); a start, a retry or a re-run resumes from the newest."""

    def __init__(self, run_dir: str, keep: int) -> None:
        super().__init__()
        self.run_dir, self.keep = run_dir, max(1, keep)
        os.makedirs(run_dir, exist_ok=True)

    def saved(self) -> list[str]:
        names = sorted(n for n in os.listdir(self.run_dir)
                       if n.startswith("checkpoint_") and n[len("checkpoint_"):].isdigit())
        return [os.path.join(self.run_dir, n) for n in names]

    def checkpoint(self) -> str | None:
        saved = self.saved()
        return saved[-1] if saved else None

    def report(self, metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        if ckpt_dir is None:
            return
        dest = os.path.join(self.run_dir, f"checkpoint_{int(metrics['epoch']):06d}")
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt_dir, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)   # a crash mid-copy never leaves a half checkpoint to resume from
        for old in self.saved()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
