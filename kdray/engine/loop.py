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
from kdray.config import ExperimentConfig
from kdray.engine.checkpoint import rng_state
from kdray.engine.optim import apply_schedules, build_optimizer
from kdray.methods.base import Method
from kdray.types import Step

log = logging.getLogger(__name__)


@dataclass
class EpochEnd:
    """What `on_epoch_end` receives after each epoch (on every rank)."""

    epoch: int                       # 0-based index of the epoch just finished
    metrics: dict[str, float]        # rank-aggregated train/* and val/* metrics, plus "epoch"
    records: dict[str, list[dict]]   # evaluation tables (e.g. per-episode rows); {} if no eval
    is_last: bool
    make_state: Callable[[], dict[str, Any]]  # builds the checkpoint state on demand


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
    tcfg, ocfg = cfg.train, cfg.optim
    opt = build_optimizer(method, ocfg)
    amp_dtype, use_scaler = amp_settings(tcfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    its_per_epoch = len(loader) if not tcfg.steps_per_epoch else min(len(loader), tcfg.steps_per_epoch)
    if its_per_epoch == 0:
        raise ValueError("the training loader yields no batch: dataset smaller than the batch size")
    total_its = its_per_epoch * tcfg.epochs
    start_epoch, it, history = 0, 0, []
    if resume is not None:
        method.load_checkpoint_state(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        start_epoch, it, history = resume["epoch"], resume["it"], list(resume.get("history", []))
        log.info("resuming at epoch %d (step %d)", start_epoch, it)
    rank = dist.rank()
    metrics: dict[str, float] = history[-1] if history else {}

    for epoch in range(start_epoch, tcfg.epochs):
        seed_all(seed_for(cfg.seed, epoch, rank))
        if set_epoch is not None:
            set_epoch(epoch)
        if cb.on_epoch_start is not None:
            cb.on_epoch_start(epoch)
        method.train()
        sums: dict[str, torch.Tensor] = {}
        window: dict[str, torch.Tensor] = {}
        window_n = 0
        bad = torch.zeros((), dtype=torch.bool, device=device)
        t0 = time.perf_counter()
        n_images = 0
        for i, batch in enumerate(loader):
            if i >= its_per_epoch:
                break
            step = Step(it=it, epoch=epoch, total_its=total_its, its_per_epoch=its_per_epoch)
            lr, wd = apply_schedules(opt, ocfg, step.progress, tcfg.epochs)
            batch = batch.to(device, non_blocking=True)
            if tcfg.channels_last:
                batch.views = [v.contiguous(memory_format=torch.channels_last) for v in batch.views]
            ctx = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                out = method(batch, step)
            loss = out["loss"]
            bad |= ~torch.isfinite(loss.detach())
            scaler.scale(loss).backward()
            if ocfg.clip_grad > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in opt.param_groups for p in g["params"]], ocfg.clip_grad)
            method.on_after_backward(step)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            method.after_step(step)
            it += 1
            n_images += len(batch)
            for k, v in out.items():
                v = v.detach().float()
                sums[k] = sums.get(k, 0.0) + v
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            if it % tcfg.log_every == 0:
                _check_finite(dist.all_reduce_sum(bad.float()) > 0, out, step)
                vals = _mean_over_ranks(window, window_n)  # a collective: every rank joins
                if cb.on_log is not None:
                    cb.on_log({**{f"train/{k}": v for k, v in vals.items()}, "train/lr": lr,
                               "train/wd": wd}, it)
                window, window_n = {}, 0
        _check_finite(dist.all_reduce_sum(bad.float()) > 0, out, step)
        elapsed = time.perf_counter() - t0
        metrics = {f"train/{k}": v for k, v in _mean_over_ranks(sums, its_per_epoch).items()}
        total_images = float(dist.all_reduce_sum(torch.tensor(float(n_images), device=device)))
        metrics.update({"epoch": epoch + 1, "train/lr": lr, "perf/epoch_s": elapsed,
                        "perf/step_s": elapsed / its_per_epoch,
                        "perf/images_per_s": total_images / max(elapsed, 1e-9)})
        records: dict[str, list[dict]] = {}
        is_last = epoch + 1 == tcfg.epochs
        if evaluator is not None and ((epoch + 1) % cfg.eval.every == 0 or is_last):
            result = evaluator(method, device)
            metrics.update(result.metrics)
            records = result.records
        history.append(dict(metrics))

        snapshot = list(history)

        def make_state(epoch=epoch, it=it, snapshot=snapshot) -> dict[str, Any]:
            return {"model": method.checkpoint_state(), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                    "it": it, "history": snapshot, "config": cfg.to_dict()}

        log.info("epoch %d/%d %s", epoch + 1, tcfg.epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        if cb.on_epoch_end is not None:
            cb.on_epoch_end(EpochEnd(epoch, dict(metrics), records, is_last, make_state))
    return FitResult(metrics=dict(metrics), history=history)


def _mean_over_ranks(sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
    """Per-key mean over steps and ranks (one all-reduce for all keys)."""
    if not sums:
        return {}
    keys = sorted(sums)
    vec = torch.stack([torch.as_tensor(sums[k]).float().reshape(()) for k in keys]) / max(n, 1)
    vec = dist.all_reduce_mean(vec)
    return {k: float(v) for k, v in zip(keys, vec.cpu().tolist())}
