"""The method contract, parametrised over the whole registry (timm-style): a method is checked the
moment it is registered. Each method package declares its tiny configuration next to itself
(kdray/methods/<name>/tiny.py); nothing here names a method, so adding one edits no test."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from kdray.config import ConfigError, ExperimentConfig
from kdray.engine.loop import seed_all
from kdray.methods import METHODS, build_method
from kdray.search import Choice, Float, Int
from kdray.types import Batch, Step

NUM_CLASSES = 4


def _tiny_module(name: str):
    return importlib.import_module(METHODS[name].__module__.rsplit(".", 1)[0] + ".tiny")


def tiny_config(name: str, tmp_path, **over) -> ExperimentConfig:
    def make(o: dict) -> ExperimentConfig:
        return ExperimentConfig().override(o)

    base = _tiny_module(name).tiny_config(name, tmp_path, NUM_CLASSES, make)
    return make({"method": name, **base, **over})


def tiny_batch(cfg: ExperimentConfig, b: int = 8) -> Batch:
    g = torch.Generator().manual_seed(0)
    s, d = cfg.data.image_size, cfg.data
    views = [torch.randn(b, 3, s, s, generator=g)]
    masks = None
    if d.augment == "multicrop":
        views = [torch.randn(b, 3, s, s, generator=g) for _ in range(d.global_crops)]
        views += [torch.randn(b, 3, d.local_size, d.local_size, generator=g)
                  for _ in range(d.local_crops)]
        n = s // d.patch_size
        masks = [torch.rand(b, n, n, generator=g) < 0.4 for _ in range(d.global_crops)]
    labels = torch.tensor([0, 1, 2, 3] * (b // 4))
    extra_fn = getattr(_tiny_module(cfg.method), "tiny_extra", None)
    extra = extra_fn(views[0], labels) if extra_fn else {}
    return Batch(views=views, labels=labels, masks=masks, extra=extra)


def _step(method, cfg, it: int = 0) -> dict:
    out = method(tiny_batch(cfg), Step(it=it, epoch=1, total_its=10))
    out["loss"].backward()
    return out


def _unused(method) -> list[str]:
    return [n for n, p in method.student.named_parameters() if p.requires_grad and p.grad is None]


def _n_params(method) -> int:
    return sum(p.numel() for p in method.student.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_step_contract(name, tmp_path):
    seed_all(0)
    cfg = tiny_config(name, tmp_path)
    method = build_method(cfg, NUM_CLASSES).train()
    out = method(tiny_batch(cfg), Step(it=0, epoch=1, total_its=10))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    for k, v in out.items():
        assert v.ndim == 0, k
        if k != "loss":
            assert not v.requires_grad, f"{k} is logged, so it must be detached"
    out["loss"].backward()
    assert not _unused(method), f"unused student parameters would break DDP: {_unused(method)[:5]}"
    if method.teacher is not None:
        assert all(p.grad is None for p in method.teacher.parameters())
        assert not method.teacher.training


def _weights(name: str) -> list[str]:
    cls = METHODS[name].Config
    return [f.name for f in dataclasses.fields(cls) if f.name.startswith("w_")
            and (getattr(cls(), f.name) or 0) > 0]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_zero_weight_builds_nothing_and_leaves_no_unused_parameter(name, tmp_path):
    """Setting any w_<term> to 0 builds no module for that term: no parameter DDP would wait
    for, and never more parameters than with the term on."""
    seed_all(0)
    full = _n_params(build_method(tiny_config(name, tmp_path), NUM_CLASSES))
    tried = 0
    for w in _weights(name):
        try:
            cfg = tiny_config(name, tmp_path, **{f"method_cfg.{w}": 0.0})
        except ConfigError:  # e.g. the last non-zero weight: the config itself refuses it
            continue
        tried += 1
        seed_all(0)
        method = build_method(cfg, NUM_CLASSES).train()
        _step(method, cfg)
        assert not _unused(method), (w, _unused(method)[:5])
        assert _n_params(method) <= full, w
    assert tried or not _weights(name), f"{name}: no weight could be set to 0"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_after_step_moves_an_ema_teacher_and_never_a_frozen_one(name, tmp_path):
    seed_all(0)
    cfg = tiny_config(name, tmp_path)
    method = build_method(cfg, NUM_CLASSES).train()
    if method.teacher is None:
        assert METHODS[name].teacher_update == "frozen"  # nothing to move
        return
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    opt = torch.optim.SGD([p for p in method.student.parameters() if p.requires_grad], lr=0.1)
    _step(method, cfg)
    opt.step()
    method.after_step(Step(it=0, epoch=1, total_its=10))
    moved = [k for k, v in method.teacher.state_dict().items() if not torch.equal(v, before[k])]
    if METHODS[name].teacher_update == "ema":
        assert moved, "after_step did not move the EMA teacher"
    else:
        assert moved == [], f"the frozen teacher changed: {moved[:5]}"
    assert all(not p.requires_grad for p in method.teacher.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_search_space_names_config_fields(name):
    cls = METHODS[name].Config
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.SEARCH) <= fields
    for key, dom in cls.SEARCH.items():
        assert isinstance(dom, Float | Int | Choice), key
        default = getattr(cls(), key)
        if default is not None and isinstance(dom, Float | Int):
            assert dom.low <= default <= dom.high or key.startswith("w_"), (key, default, dom)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_search_key_validates_at_both_ends(name, tmp_path):
    """A searched trial never dies of its own range: each end of each SEARCH domain (every
    choice of a Choice) is a valid config of the tiny setting."""
    cls = METHODS[name].Config
    for key, dom in cls.SEARCH.items():
        values = dom.values if isinstance(dom, Choice) else (dom.low, dom.high)
        for v in values:
            cfg = tiny_config(name, tmp_path, **{f"method_cfg.{key}": v})
            assert getattr(cfg.method_cfg, key) == v


@pytest.mark.parametrize("name", sorted(METHODS))
def test_checkpoint_state_roundtrip(name, tmp_path):
    seed_all(0)
    cfg = tiny_config(name, tmp_path)
    a = build_method(cfg, NUM_CLASSES)
    seed_all(1)
    b = build_method(cfg, NUM_CLASSES)
    b.load_checkpoint_state(a.checkpoint_state())
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
