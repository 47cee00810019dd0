"""The training loop shared by every method: `fit(method, loader, cfg, ...)`.

It knows nothing about Ray. Distribution arrives from outside: the caller initialises the process
group and DDP-wraps `method.student` (see `kdray.engine.runner`); the loop only uses the
`kdray.dist` helpers, which are identity functions in a single process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kdray import dist
from kdray.checkpoint import rng_state
from kdray.config import ExperimentConfig
from kdray.engine.optim import apply_schedules, build_optimizer
from kdray.methods.base import Method
from kdray.types import Step

log = logging.getLogger(__name__)


@dataclass
class EpochEnd:
    """What `on_epoch_end` receives after each epoch (on every rank)."""

    epoch: int                       # 0-based index of the epoch just finished
    metrics: dict[str, float]        # rank-aggregated train/* and val/* or test/* metrics, plus "epoch"
    records: dict[str, list[dict]]   # evaluation tables (e.g. per-episode rows); {} if no eval
    is_last: bool
    make_state: Callable[[], dict[str, Any]]  # builds the checkpoint state on demand
    step: int = 0                    # global optimizer steps done at the end of this epoch


@dataclass
class Callbacks:
    on_log: Callable[[dict[str, float], int], None] | None = None
    on_epoch_end: Callable[[EpochEnd], None] | None = None
    on_epoch_start: Callable[[int], None] | None = None


@dataclass
class FitResult:
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def seed_for(base: int, epoch: int, rank: int) -> int:
    return (base * 1_000_003 + epoch * 10_007 + rank * 101) % (2**31 - 1)


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, False
    if mode == "fp16":
        return torch.float16, device.type == "cuda"
    if mode == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16, True
    return torch.bfloat16, False


class NonFiniteLossError(FloatingPointError):
    pass


def _check_finite(bad: torch.Tensor, last: dict[str, torch.Tensor], step: Step) -> None:
    if bool(bad):
        terms = {k: float(v.detach().float()) for k, v in last.items()}
        raise NonFiniteLossError(f"non-finite loss at epoch {step.epoch}, step {step.it}: {terms}")


def fit(method: Method, loader, cfg: ExperimentConfig, *, device: torch.device,
        set_epoch: Callable[[int], None] | None = None, evaluator=None,
        callbacks: Callbacks | None = None, resume: dict[str, Any] | None = None) -> FitResult:
    """Train `method` for `cfg.train.epochs` epochs, evaluating and calling back after each epoch.

    Args:
        method: a Method whose `student` may already be DDP-wrapped.
        loader: iterable of `Batch`es (one rank's shard; every rank yields equally many).
        cfg: the experiment config (train, optim, eval sections are read).
        device: where batches go.
        set_epoch: called with the epoch index before iterating (sampler/augmentation seeds).
        evaluator: callable (method, device) -> EvalResult, run on every rank (it shards itself).
        callbacks: step-level `on_log` and per-epoch `on_epoch_end` hooks.
        resume: a checkpoint state from `EpochEnd.make_state` to continue from.
    """
    cb = callbacks or Callbacks()
    run = _Run(method, loader, cfg, device, resume)
    metrics: dict[str, float] = run.history[-1] if run.history else {}
    for epoch in range(run.start_epoch, cfg.train.epochs):
        seed_all(seed_for(cfg.seed, epoch, run.rank))
        if set_epoch is not None:
            set_epoch(epoch)
        if cb.on_epoch_start is not None:
            cb.on_epoch_start(epoch)
        metrics = run.train_epoch(epoch, cb.on_log)
        records: dict[str, list[dict]] = {}
        is_last = epoch + 1 == cfg.train.epochs
        if evaluator is not None and ((epoch + 1) % cfg.eval.every == 0 or is_last):
            result = evaluator(method, device)
            metrics.update(result.metrics)
            records = result.records
        run.history.append(dict(metrics))
        log.info("epoch %d/%d %s", epoch + 1, cfg.train.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        if cb.on_epoch_end is not None:
            cb.on_epoch_end(EpochEnd(epoch, dict(metrics), records, is_last,
                                     run.state_maker(epoch), step=run.it))
    return FitResult(metrics=dict(metrics), history=run.history)


class _Run:
    """The state of one `fit`: optimizer, AMP scaler, position; one epoch or one step at a time."""

    def __init__(self, method: Method, loader, cfg: ExperimentConfig, device: torch.device,
                 resume: dict[str, Any] | None) -> None:
        self.method, self.loader, self.cfg, self.device = method, loader, cfg, device
        tcfg = cfg.train
        self.opt = build_optimizer(method, cfg.optim)
        self.amp_dtype, use_scaler = amp_settings(tcfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        n = len(loader)
        self.its_per_epoch = n if not tcfg.steps_per_epoch else min(n, tcfg.steps_per_epoch)
        if self.its_per_epoch == 0:
            raise ValueError("the training loader yields no batch: dataset smaller than the batch "
                             "size")
        self.total_its = self.its_per_epoch * tcfg.epochs
        self.start_epoch, self.it, self.history = 0, 0, []
        if resume is not None:
            method.load_checkpoint_state(resume["model"])
            self.opt.load_state_dict(resume["optimizer"])
            self.scaler.load_state_dict(resume["scaler"])
            self.start_epoch, self.it = resume["epoch"], resume["it"]
            self.history = list(resume.get("history", []))
            log.info("resuming at epoch %d (step %d)", self.start_epoch, self.it)
        self.rank = dist.rank()

    def train_epoch(self, epoch: int, on_log) -> dict[str, float]:
        """One epoch of steps; returns the epoch's train/* and perf/* metrics (over ranks)."""
        self.method.train()
        sums: dict[str, torch.Tensor] = {}
        window: dict[str, torch.Tensor] = {}
        window_n = n_images = 0
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        t0 = time.perf_counter()
        for i, batch in enumerate(self.loader):
            if i >= self.its_per_epoch:
                break
            step = Step(it=self.it, epoch=epoch, total_its=self.total_its,
                        its_per_epoch=self.its_per_epoch)
            out, lr, wd = self.train_step(batch, step)
            bad |= ~torch.isfinite(out["loss"].detach())
            n_images += len(batch)
            for k, v in out.items():
                v = v.detach().float()
                sums[k] = sums.get(k, 0.0) + v
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            if self.it % self.cfg.train.log_every == 0:
                _check_finite(dist.all_reduce_sum(bad.float()) > 0, out, step)
                vals = _mean_over_ranks(window, window_n)  # a collective: every rank joins
                if on_log is not None:
                    on_log({**{f"train/{k}": v for k, v in vals.items()}, "train/lr": lr,
                            "train/wd": wd}, self.it)
                window, window_n = {}, 0
        _check_finite(dist.all_reduce_sum(bad.float()) > 0, out, step)
        elapsed = time.perf_counter() - t0
        metrics = {f"train/{k}": v for k, v in _mean_over_ranks(sums, self.its_per_epoch).items()}
        total = float(dist.all_reduce_sum(torch.tensor(float(n_images), device=self.device)))
        metrics.update({"epoch": epoch + 1, "train/lr": lr, "perf/epoch_s": elapsed,
                        "perf/step_s": elapsed / self.its_per_epoch,
                        "perf/images_per_s": total / max(elapsed, 1e-9)})
        return metrics

    def train_step(self, batch, step: Step) -> tuple[dict[str, torch.Tensor], float, float]:
        """Forward, backward (AMP, clipping), optimizer step, `after_step`; (loss dict, lr, wd)."""
        method, opt, scaler, ocfg = self.method, self.opt, self.scaler, self.cfg.optim
        lr, wd = apply_schedules(opt, ocfg, step.progress, self.cfg.train.epochs)
        batch = batch.to(self.device, non_blocking=True)
        if self.cfg.train.channels_last:
            batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
        ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype)
               if self.amp_dtype is not None else contextlib.nullcontext())
        with ctx:
            out = method(batch, step)
        scaler.scale(out["loss"]).backward()
        if ocfg.clip_grad > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(
                [p for g in opt.param_groups for p in g["params"]], ocfg.clip_grad)
        method.on_after_backward(step)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        method.after_step(step)
        self.it += 1
        return out, lr, wd

    def state_maker(self, epoch: int) -> Callable[[], dict[str, Any]]:
        """Builds the checkpoint state of the position after `epoch`, on demand."""
        it, snapshot = self.it, list(self.history)

        def make_state() -> dict[str, Any]:
            return {"model": self.method.checkpoint_state(), "optimizer": self.opt.state_dict(),
                    "scaler": self.scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                    "it": it, "history": snapshot, "config": self.cfg.to_dict()}

        return make_state


def _mean_over_ranks(sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
    """Per-key mean over steps and ranks (one all-reduce for all keys)."""
    if not sums:
        return {}
    keys = sorted(sums)
    vec = torch.stack([torch.as_tensor(sums[k]).float().reshape(()) for k in keys]) / max(n, 1)
    vec = dist.all_reduce_mean(vec)
    return {k: float(v) for k, v in zip(keys, vec.cpu().tolist())}
