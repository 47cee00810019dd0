"""Build a method, its data and its evaluator from a config and run `fit` (no Ray).

`train(cfg)` is what every entry point runs: the Ray Train worker (one call per worker, inside the
process group Ray set up), `torch.multiprocessing` tests, and `python -m kdray.engine.runner` for a
single debug process.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from kdray import dist
from kdray.checkpoint import load_checkpoint, save_checkpoint
from kdray.config import ExperimentConfig, parse_overrides
from kdray.engine.loop import Callbacks, EpochEnd, FitResult, fit, seed_all
from kdray.methods import build_method
from kdray.methods.base import Method

log = logging.getLogger(__name__)


def resolve_device(cfg: ExperimentConfig) -> torch.device:
    if cfg.resources.gpus_per_worker > 0 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def distribute(method: Method, device: torch.device) -> Method:
    """DDP-wrap the trainable part only (the teacher is never wrapped)."""
    if dist.world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        method.student = DistributedDataParallel(method.student, device_ids=ids)
    return method


def build(cfg: ExperimentConfig, device: torch.device):
    """(method, train loader, set_epoch fn, evaluator) for this rank."""
    from kdray.data import build_eval_dataset, build_train_loader, num_train_classes, set_epoch
    from kdray.eval import build_evaluator

    seed_all(cfg.seed)  # identical initial weights on every rank
    method = build_method(cfg, num_train_classes(cfg))
    if cfg.train.init_from:
        method.init_from_checkpoint(cfg.train.init_from)
    method.to(device)
    distribute(method, device)
    loader = build_train_loader(cfg, rank=dist.rank(), world=dist.world_size())
    evaluator = None
    if cfg.eval.kind != "none":
        evaluator = build_evaluator(cfg, build_eval_dataset(cfg))
    return method, loader, (lambda e: set_epoch(loader, e)), evaluator


def train(cfg: ExperimentConfig, *, callbacks: Callbacks | None = None,
          resume: dict[str, Any] | None = None, device: torch.device | None = None) -> FitResult:
    device = device or resolve_device(cfg)
    method, loader, set_epoch, evaluator = build(cfg, device)
    return fit(method, loader, cfg, device=device, set_epoch=set_epoch, evaluator=evaluator,
               callbacks=callbacks, resume=resume)


def main(argv: list[str] | None = None) -> FitResult:
    """Single-process debug run: `python -m kdray.engine.runner --method ce --set train.epochs=1`."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--method", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/debug", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = parse_overrides(a.set)
    if a.method:
        overrides = {"method": a.method, **overrides}
    cfg = ExperimentConfig().override(overrides)
    res = run_local(cfg, a.out, resume=a.resume)
    print({k: round(v, 4) for k, v in res.metrics.items()})
    return res


def run_local(cfg: ExperimentConfig, out: str, *, resume: bool = False) -> FitResult:
    """Train in this process, checkpointing every epoch to `<out>/checkpoint.pt`."""
    state = load_checkpoint(out) if resume and os.path.exists(out) else None

    def on_epoch_end(e: EpochEnd) -> None:
        save_checkpoint(e.make_state(), out)

    return train(cfg, callbacks=Callbacks(on_epoch_end=on_epoch_end), resume=state)


if __name__ == "__main__":
    main()
