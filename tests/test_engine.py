"""Engine: DDP step equals single process, exact resume, NaN guard, schedules, checkpoints."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import gloo_group

from kdray import schedules
from kdray.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from kdray.config import ExperimentConfig
from kdray.engine.loop import NonFiniteLossError, fit, seed_all
from kdray.engine.runner import distribute
from kdray.methods import build_method
from kdray.types import Batch

STEP_CFG = ExperimentConfig().override({
    "model.arch": "mlp", "data.image_size": 8, "train.epochs": 2, "eval.kind": "none",
    "optim.name": "sgd", "optim.lr": 0.5, "optim.momentum": 0.9, "optim.weight_decay": 1e-3,
    "optim.schedule": "cosine", "optim.clip_grad": 1.0, "train.log_every": 1})


def _batches(n_steps: int = 3, b: int = 8) -> list[Batch]:
    g = torch.Generator().manual_seed(123)
    return [Batch(views=[torch.randn(b, 3, 8, 8, generator=g)],
                  labels=torch.randint(0, 5, (b,), generator=g)) for _ in range(n_steps)]


def _shard(batches: list[Batch], rank: int, world: int) -> list[Batch]:
    return [Batch(views=[x.views[0][rank::world]], labels=x.labels[rank::world]) for x in batches]


def _run(rank: int, world: int, init: str, out: str) -> None:
    with gloo_group(rank, init, world) if world > 1 else nullcontext():
        _train(rank, world, out)


def _train(rank: int, world: int, out: str) -> None:
    torch.set_num_threads(1)
    seed_all(0)
    method = build_method(STEP_CFG, num_classes=5)
    distribute(method, torch.device("cpu"))
    logs = []
    res = fit(method, _shard(_batches(), rank, world), STEP_CFG, device=torch.device("cpu"),
              callbacks=None if rank else __import__("kdray.engine.loop", fromlist=["Callbacks"])
              .Callbacks(on_log=lambda m, s: logs.append((s, m["train/loss"]))))
    if rank == 0:
        torch.save({"state": method.checkpoint_state()["student"], "metrics": res.metrics,
                    "logs": logs}, out)


def test_ddp_training_equals_single_process(tmp_path):
    """2 gloo processes on half-batches give the same weights and logged losses as one process."""
    single, double = str(tmp_path / "single.pt"), str(tmp_path / "double.pt")
    _run(0, 1, "", single)
    mp.spawn(_run, args=(2, f"file://{tmp_path}/pg", double), nprocs=2, join=True)
    a = torch.load(single, weights_only=True)
    b = torch.load(double, weights_only=True)
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=1e-5, atol=1e-6)
    assert a["metrics"]["train/loss"] == pytest.approx(b["metrics"]["train/loss"], rel=1e-5)
    assert [s for s, _ in a["logs"]] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([v for _, v in a["logs"]], [v for _, v in b["logs"]], rtol=1e-5)
    # the weights really moved: the test would catch a no-op optimizer
    seed_all(0)
    init = build_method(STEP_CFG, num_classes=5).checkpoint_state()["student"]
    assert any(not torch.allclose(init[k], a["state"][k]) for k in init)


def test_nan_guard_names_the_loss_terms():
    class Bad(torch.nn.Module):
        pass

    seed_all(0)
    method = build_method(STEP_CFG, num_classes=5)
    orig = method.forward

    def forward(batch, step):
        out = orig(batch, step)
        out["loss"] = out["loss"] * float("nan")
        return out

    method.forward = forward
    with pytest.raises(NonFiniteLossError, match=r"'loss': nan.*'ce'"):
        fit(method, _batches(), STEP_CFG, device=torch.device("cpu"))


def test_schedules_hit_endpoints():
    assert schedules.cosine(0.0, 1.0, 0.1) == pytest.approx(1.0)
    assert schedules.cosine(1.0, 1.0, 0.1) == pytest.approx(0.1)
    assert schedules.cosine(0.5, 1.0, 0.0) == pytest.approx(0.5)
    assert schedules.cosine(0.05, 1.0, 0.0, warmup=0.1) == pytest.approx(0.5)  # warm-up midpoint
    assert schedules.cosine(0.1, 1.0, 0.0, warmup=0.1) == pytest.approx(1.0)
    vals = [schedules.cosine(p / 100, 0.996, 1.0) for p in range(101)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))  # EMA momentum only increases
    assert schedules.warmup_then_constant(0.15, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert schedules.warmup_then_constant(0.9, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert schedules.step_decay(0.7, 0.05, (0.625, 0.75, 0.875), 0.1) == pytest.approx(0.005)
    assert schedules.lr_at(0.0, base=0.1, kind="constant") == 0.1
    with pytest.raises(ValueError, match="unknown lr schedule"):
        schedules.lr_at(0.0, base=0.1, kind="poly")


def test_checkpoint_roundtrip_weights_only_and_rng(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = {"rng": rng_state(), "epoch": 2, "model": {"student": {"w": torch.ones(2)}}}
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    save_checkpoint(state, str(tmp_path))
    loaded = load_checkpoint(str(tmp_path))  # uses weights_only=True
    set_rng_state(loaded["rng"])
    got = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert got == expected and loaded["epoch"] == 2
    assert not math.isnan(got[0])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing"))
