"""The method contract, parametrised over the whole registry (timm-style): every method in
METHODS gets checked the moment it is registered."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kdray.config import ExperimentConfig
from kdray.engine.loop import seed_all
from kdray.methods import METHODS, build_method
from kdray.modules.teachers import build_classifier as build_student
from kdray.search import Choice, Float, Int
from kdray.types import Batch, Step

NUM_CLASSES = 4


def tiny_config(name: str, tmp_path) -> ExperimentConfig:
    over = {"method": name, "model.arch": "conv2", "data.image_size": 16, "data.patch_size": 4}
    if name == "kd":
        teacher_cfg = ExperimentConfig().override({"model.arch": "conv2", "data.image_size": 16})
        path = tmp_path / "teacher.pt"
        torch.save({"model": {"student": build_student(teacher_cfg, NUM_CLASSES).state_dict()}}, path)
        over["model.teacher_ckpt"] = str(path)
    if name == "cskd":  # a 3-block CNN teacher (2x2 dense grid at 16 px) and a patch-4 DeiT
        teacher_cfg = ExperimentConfig().override({"model.arch": "conv3", "data.image_size": 16})
        path = tmp_path / "cnn_teacher.pt"
        torch.save({"model": {"student": build_student(teacher_cfg, NUM_CLASSES).state_dict()}}, path)
        over.update({"model.arch": "vit_nano_p4_32", "model.teacher_arch": "conv3",
                     "model.teacher_ckpt": str(path)})
    if name in ("sskd", "sskd_teacher"):  # conv2 teacher; sskd reads a T2 (teacher + SS head) file
        teacher = build_student(ExperimentConfig().override({"model.arch": "conv2"}), NUM_CLASSES)
        path = tmp_path / "sskd_teacher.pt"
        model = {"student": teacher.state_dict()}
        if name == "sskd":
            from kdray.methods.sskd.method import ss_head
            model = {"teacher": teacher.state_dict(), "ss_head": ss_head(32).state_dict()}
        torch.save({"model": model}, path)
        over.update({"model.teacher_arch": "conv2", "model.teacher_ckpt": str(path)})
    if name == "smkd":
        over.update({"model.arch": "vit_nano_p4_32", "data.image_size": 32, "data.local_size": 16,
                     "data.augment": "multicrop", "data.local_crops": 2, "data.mask_prob": 0.5,
                     "method_cfg.phase": "supervised", "method_cfg.allow_scratch": True,
                     "method_cfg.out_dim": 64, "method_cfg.hidden_dim": 32,
                     "method_cfg.bottleneck_dim": 16, "method_cfg.w_mim": 1.0})
    if name == "m2sd":  # needs per-stage maps: the smallest CIFAR ResNet
        over["model.arch"] = "resnet8"
    if name == "mkd":  # RetinaNet-R18 student and teacher, narrow FPN and decoder, 64 px
        small = {"method_cfg.fpn_channels": 16, "method_cfg.teacher_fpn_channels": 16,
                 "method_cfg.decoder_dim": 16, "method_cfg.decoder_heads": 2,
                 "data.image_size": 64, "model.arch": "resnet18"}
        teacher = build_method(ExperimentConfig().override(
            {"method": "mkd", **small, "method_cfg.w_feat": 0.0, "method_cfg.w_global": 0.0}),
            NUM_CLASSES)
        path = tmp_path / "mkd_teacher.pt"
        torch.save({"model": teacher.checkpoint_state()}, path)
        over.update({**small, "model.teacher_ckpt": str(path)})
    return ExperimentConfig().override(over)


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
    extra = {}
    if cfg.method == "mkd":  # detection: one box per image, its class the image label
        extra["targets"] = [{"boxes": torch.tensor([[2.0, 4.0, s - 8.0, s - 2.0]]),
                             "labels": y.view(1)} for y in labels]
    return Batch(views=views, labels=labels, masks=masks, extra=extra)


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
    missing = [n for n, p in method.student.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"unused student parameters would break DDP: {missing[:5]}"
    if method.teacher is not None:
        assert all(p.grad is None for p in method.teacher.parameters())
        assert not method.teacher.training


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
def test_checkpoint_state_roundtrip(name, tmp_path):
    seed_all(0)
    cfg = tiny_config(name, tmp_path)
    a = build_method(cfg, NUM_CLASSES)
    seed_all(1)
    b = build_method(cfg, NUM_CLASSES)
    b.load_checkpoint_state(a.checkpoint_state())
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
