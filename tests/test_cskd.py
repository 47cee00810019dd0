"""Cumulative Spatial KD: dense teacher, student pooling, fusion targets, alpha schedules, losses
against hand computations, inference averaging, a frozen teacher, the DeiT data recipe (mixing
equal to timm's, repeated augmentation) and a smoke-size CIFAR-10 run of every ablation row."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import load_study

from kdray.config import ConfigError, ExperimentConfig
from kdray.data.samplers import RepeatedAugBatchSampler
from kdray.engine.loop import seed_all
from kdray.engine.preflight import method_preflight
from kdray.methods import build_method
from kdray.methods.cskd import losses as L
from kdray.methods.cskd.dense import DenseTeacher, check_dense_consistent
from kdray.modules.backbones import Classifier, build_backbone
from kdray.modules.mixing import draw_mix, mix_images, mix_targets
from kdray.modules.teachers import build_classifier as build_cnn
from kdray.types import Batch, Step

C = 4
REPO = Path(__file__).resolve().parents[1]


def _teacher_file(tmp_path, arch: str = "conv3", size: int = 32) -> str:
    cfg = ExperimentConfig().override({"model.arch": arch, "data.image_size": size})
    path = tmp_path / f"{arch}.pt"
    torch.save({"model": {"student": build_cnn(cfg, C).state_dict()}}, path)
    return str(path)


def _cfg(tmp_path, **over) -> ExperimentConfig:
    base = {"method": "cskd", "model.arch": "vit_nano_p4_32", "data.image_size": 32,
            "model.teacher_arch": "conv3", "model.teacher_ckpt": _teacher_file(tmp_path)}
    return ExperimentConfig().override({**base, **over})


def _batch(b: int = 4, size: int = 32) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(views=[torch.randn(b, 3, size, size, generator=g)],
                 labels=torch.arange(b) % C)


# ---------------------------------------------------------------------------- teacher
@pytest.mark.parametrize("kind", ["kdray_conv3", "timm_resnet", "kdray_timm_backbone"])
def test_teacher_dense_logits_average_to_global_logits(kind):
    torch.manual_seed(0)
    if kind == "kdray_conv3":
        net = Classifier(build_backbone("conv3"), C)
    elif kind == "timm_resnet":
        net = timm.create_model("resnet10t", num_classes=C)
    else:
        net = Classifier(build_backbone("resnet10t"), C)
    teacher = DenseTeacher(net).eval()
    x = torch.randn(3, 3, 64, 64)
    dense = teacher(x)
    ref = net(x).logits if isinstance(net, Classifier) else net(x)
    assert dense.shape[:2] == (3, C) and dense.shape[2] > 1
    torch.testing.assert_close(dense.mean(dim=(2, 3)), ref, atol=1e-5, rtol=1e-4)
    assert check_dense_consistent(teacher, 64) == tuple(dense.shape[2:])


def test_dense_check_rejects_a_head_that_is_not_linear_after_pooling():
    net = timm.create_model("convnext_atto", num_classes=C)   # LayerNorm after the pooling
    with torch.no_grad():
        net.head.norm.weight.uniform_(0.5, 2.0)
    with pytest.raises(ValueError, match="not a linear layer after"):
        check_dense_consistent(DenseTeacher(net), 64)


# ---------------------------------------------------------------------------- student pooling
def test_student_dense_logits_are_the_dist_head_on_patches_and_pool_blockwise(tmp_path):
    seed_all(0)
    method = build_method(_cfg(tmp_path), C).train()
    x = _batch().views[0]
    out = method.student(x)
    vit = method.student.vit
    tokens = vit.forward_features(x)
    torch.testing.assert_close(out.dense, vit.head_dist(tokens[:, 2:]))
    assert out.grid == (8, 8) and out.dense.shape == (4, 64, C)
    pooled = L.pool_student(out.dense, out.grid, (4, 4))
    grid = out.dense.reshape(4, 8, 8, C)               # row-major patches
    for i, j in [(0, 0), (1, 3), (3, 2)]:
        block = grid[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(1, 2))
        torch.testing.assert_close(pooled[:, :, i, j], block)
    assert L.pool_student(out.dense, (8, 8), (8, 8)).shape == (4, C, 8, 8)


# ---------------------------------------------------------------------------- fusion targets
def test_fusion_targets_local_global_and_in_between():
    # two positions whose mean (the global logits) is (2.5, 0, 3)
    t = torch.tensor([[2.5, -3.0, 6.0], [2.5, 3.0, 0.0]]).T.reshape(1, 3, 1, 2)
    assert L.fuse_teacher(t, 1.0).argmax(1).flatten().tolist() == [2, 1]   # local only
    assert L.fuse_teacher(t, 0.0).argmax(1).flatten().tolist() == [2, 2]   # global only
    mid = L.fuse_teacher(t, 0.5)
    torch.testing.assert_close(mid[0, :, 0, 1], torch.tensor([2.5, 1.5, 1.5]))
    assert mid.argmax(1).flatten().tolist() == [2, 0]  # a class neither end picks
    torch.testing.assert_close(L.fuse_teacher(t, 0.25)[0, :, 0, 0],
                               torch.tensor([2.5, -0.75, 3.75]))


# ---------------------------------------------------------------------------- alpha schedules
@pytest.mark.parametrize("shape", ["linear", "x2", "cos", "cosine"])
@pytest.mark.parametrize("start,end", [(1.0, 0.0), (0.8, 0.3)])
def test_alpha_schedules_endpoints_and_monotonic(shape, start, end):
    epochs = 10
    vals = [L.alpha_at(e, epochs, shape=shape, start=start, end=end) for e in range(epochs + 1)]
    assert vals[0] == pytest.approx(start) and vals[-1] == pytest.approx(end, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(vals, vals[1:]))
    assert vals[5] < start and vals[5] > end


def test_alpha_schedule_values_match_the_official_formulas(tmp_path):
    assert L.alpha_at(299, 300) == pytest.approx(1 / 300)           # linear ends at 1/E
    assert L.alpha_at(5, 10, shape="x2") == pytest.approx(0.25)
    assert L.alpha_at(5, 10, shape="cos") == pytest.approx(math.cos(math.pi / 4))
    assert L.alpha_at(7, 10, shape="constant", start=0.0) == 0.0
    method = build_method(_cfg(tmp_path, **{"method_cfg.alpha_schedule": "x2"}), C)
    step = Step(it=37, epoch=3, total_its=40, its_per_epoch=4)      # 10 epochs, stepped per epoch
    assert method.alpha(step) == pytest.approx(0.7 ** 2)


# ---------------------------------------------------------------------------- losses by hand
def _log_softmax(v: list[float]) -> list[float]:
    z = math.log(sum(math.exp(a) for a in v))
    return [a - z for a in v]


def test_hard_and_soft_losses_against_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]).T.reshape(1, 3, 1, 2)
    t = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    hard = -(_log_softmax([1.0, 0.0, -1.0])[1] + _log_softmax([0.5, 2.0, 0.0])[0]) / 2
    assert L.cskd_hard(s, t).item() == pytest.approx(hard, rel=1e-6)
    tau, total = 2.0, 0.0
    for sv, tv in [([1.0, 0.0, -1.0], [0.0, 3.0, 1.0]), ([0.5, 2.0, 0.0], [2.0, 0.0, 0.0])]:
        ls, lt = _log_softmax([a / tau for a in sv]), _log_softmax([a / tau for a in tv])
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    assert L.cskd_soft(s, t, tau).item() == pytest.approx(total * tau * tau / 1, rel=1e-6)
    sd, tg = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 3.0, 1.0]])
    assert L.distill_hard(sd, tg).item() == pytest.approx(-_log_softmax([1.0, 0.0, -1.0])[1])
    ls, lt = _log_softmax([0.5, 0.0, -0.5]), _log_softmax([0.0, 1.5, 0.5])
    kl = sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    assert L.distill_soft(sd, tg, 2.0).item() == pytest.approx(kl * 4 / 3, rel=1e-6)


def test_total_loss_is_the_weighted_sum_and_terms_use_the_fused_targets(tmp_path):
    seed_all(0)
    cfg = _cfg(tmp_path, **{"method_cfg.w_distill": 0.3, "method_cfg.w_cskd": 1.7,
                            "method_cfg.label_smoothing": 0.0})
    method = build_method(cfg, C).train()
    batch, step = _batch(), Step(it=5, epoch=1, total_its=40, its_per_epoch=10)
    out = method(batch, step)
    assert out["loss"].item() == pytest.approx(
        0.7 * out["base"].item() + 0.3 * out["distill"].item() + 1.7 * out["cskd"].item(), rel=1e-5)
    assert out["alpha"].item() == pytest.approx(0.75)
    x = batch.views[0]
    s = method.student(x)
    t = method.teacher(x)
    assert out["base"].item() == pytest.approx(F.cross_entropy(s.cls, batch.labels).item(), rel=1e-5)
    assert out["distill"].item() == pytest.approx(
        F.cross_entropy(s.dist, t.mean((2, 3)).argmax(1)).item(), rel=1e-5)
    y = (0.75 * t + 0.25 * t.mean((2, 3), keepdim=True)).argmax(1)          # (B, 4, 4)
    pooled = F.avg_pool2d(s.dense.transpose(1, 2).reshape(4, C, 8, 8), 2)
    assert out["cskd"].item() == pytest.approx(F.cross_entropy(pooled, y).item(), rel=1e-5)


# ---------------------------------------------------------------------------- inference, teacher
@pytest.mark.parametrize("a,w,heads", [(0.5, 1.0, 3), (0.5, 0.0, 2), (0.0, 0.0, 1)])
def test_inference_averages_the_trained_heads(tmp_path, a, w, heads):
    seed_all(0)
    method = build_method(_cfg(tmp_path, **{"method_cfg.w_distill": a, "method_cfg.w_cskd": w}), C)
    method.eval()
    x = _batch().views[0]
    vit = method.student.vit
    with torch.no_grad():
        tok = vit.forward_features(x)
        parts = [vit.head(tok[:, 0])]
        if heads > 1:
            parts.append(vit.head_dist(tok[:, 1]))
        if heads > 2:
            parts.append(vit.head_dist(tok[:, 2:]).mean(dim=1))       # mean of the dense logits
    torch.testing.assert_close(method.logits(x), sum(parts) / heads, atol=1e-5, rtol=1e-5)
    assert (method.teacher is None) == (heads == 1)
    assert (getattr(vit, "dist_token", None) is None) == (heads == 1)


def test_gradients_never_reach_the_teacher_and_it_stays_frozen(tmp_path):
    seed_all(0)
    method = build_method(_cfg(tmp_path), C).train()
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    opt = torch.optim.AdamW([p for g in method.param_groups(0.05) for p in g["params"]], lr=0.1)
    teacher_ids = {id(p) for p in method.teacher.parameters()}
    assert not teacher_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    for it in range(2):
        out = method(_batch(), Step(it=it, epoch=0, total_its=2))
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert not method.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k   # BN running stats untouched too (eval mode)
    assert "teacher" not in method.checkpoint_state()
    no_decay = {id(p) for p in method.param_groups(0.05)[1]["params"]}
    assert id(method.student.vit.dist_token) in no_decay and id(method.student.vit.pos_embed) \
        in no_decay


# ---------------------------------------------------------------------------- errors
def test_preflight_errors(tmp_path, monkeypatch):
    from kdray.runtime.session import preflight

    monkeypatch.setattr("kdray.engine.preflight.num_train_classes", lambda cfg: C)
    method_preflight(_cfg(tmp_path))
    with pytest.raises(ConfigError, match="teacher grid"):      # conv3 at 20 px: 2x2; ViT 5x5
        method_preflight(_cfg(tmp_path, **{"data.image_size": 20}))
    with pytest.raises(ConfigError, match="teacher_ckpt"):
        method_preflight(_cfg(tmp_path, **{"model.teacher_ckpt": ""}))
    with pytest.raises(ConfigError, match="does not fit"):
        method_preflight(_cfg(tmp_path, **{"model.teacher_ckpt": _teacher_file(tmp_path, "conv4")}))
    with pytest.raises(ConfigError, match="1000 classes"):       # hub weights, 4 classes: no download
        method_preflight(_cfg(tmp_path, **{"model.teacher_arch": "regnety_160.deit_in1k",
                                         "model.teacher_ckpt": ""}))
    path = tmp_path / "convnext.pt"
    torch.save(timm.create_model("convnext_atto", num_classes=C).state_dict(), path)
    with pytest.raises(ConfigError, match="model.teacher_arch"):
        method_preflight(_cfg(tmp_path, **{"model.teacher_arch": "convnext_atto",
                                         "model.teacher_ckpt": str(path)}))
    with pytest.raises(ConfigError, match="model.arch"):
        method_preflight(_cfg(tmp_path, **{"model.arch": "conv4"}))
    with pytest.raises(ConfigError, match="does not apply mixup"):
        preflight(ExperimentConfig().override({"method": "ce", "data.mixup_alpha": 0.8}))
    method_preflight(_cfg(tmp_path, **{"method_cfg.w_distill": 0.0, "method_cfg.w_cskd": 0.0,
                                     "model.teacher_ckpt": ""}))  # no distillation: no teacher


# ---------------------------------------------------------------------------- DeiT data recipe
def test_mixup_cutmix_equal_timm(tmp_path):
    from timm.data import Mixup

    x = torch.randn(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    timm_mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, switch_prob=0.5,
                     mode="batch", label_smoothing=0.1, num_classes=C)
    kinds = set()
    for seed in range(12):
        np.random.seed(seed)
        ref_x, ref_y = timm_mix(x.clone(), y)
        mix = draw_mix(np.random.RandomState(seed), 16, 16, mixup_alpha=0.8, cutmix_alpha=1.0,
                       prob=0.9, switch_prob=0.5)
        kinds.add("none" if mix["lam"] == 1 else "cutmix" if mix["box"] else "mixup")
        torch.testing.assert_close(mix_images(x, mix), ref_x)
        torch.testing.assert_close(mix_targets(y, mix, C, 0.1), ref_y)
        assert torch.allclose(mix_targets(y, mix, C, 0.1).sum(1), torch.ones(6))
    assert kinds == {"none", "cutmix", "mixup"}


def test_repeated_augmentation_sampler():
    s = RepeatedAugBatchSampler(30, repeats=3, batch_size=6, seed=1)
    s.set_epoch(2)
    keys = [k for b in s for k in b]
    assert len(keys) == len(s) * 6 == 30
    counts = np.bincount([i for i, _ in keys], minlength=30)
    assert sorted(set(counts.tolist())) == [0, 3]                  # 10 images, 3 copies each
    assert len({seed for _, seed in keys}) == 30                   # each copy its own augmentation
    ranks = [RepeatedAugBatchSampler(30, repeats=3, batch_size=6, seed=1, rank=r, world=2)
             for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    merged = [sorted(a + b) for a, b in zip(*[list(r) for r in ranks])]
    assert merged == [sorted(b) for b in s]


def test_deit_transform_seeded_by_torch_and_restores_global_rngs():
    from PIL import Image

    from kdray.data.registry import get_spec
    from kdray.data.transforms import train_transform

    cfg = ExperimentConfig().override({"data.augment": "deit", "data.image_size": 32,
                                       "data.global_scale": "0.08,1.0"}).data
    tf = train_transform(cfg, get_spec("cifar10"))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    random.seed(5)
    np.random.seed(5)
    py, npy = random.random(), np.random.rand()
    outs = []
    for seed in (3, 3, 4):
        random.seed(5)
        np.random.seed(5)
        torch.manual_seed(seed)
        outs.append(tf(img)[0])
        assert (random.random(), np.random.rand()) == (py, npy)
    assert outs[0].shape == (3, 32, 32)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


# ---------------------------------------------------------------------------- CIFAR-10 smoke
def test_imagenet_presets_build_and_validate(tmp_path, monkeypatch):
    from kdray.data import DataNotFoundError, check_data

    study = load_study("cskd_ablation")
    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)
    for preset, arch, paper in [("imagenet", "deit_tiny", "76.3"), ("imagenet_b", "deit_base",
                                                                     "83.8")]:
        s = study.build(preset)
        cfgs = s.validate()
        assert len(cfgs) >= len(s.rows) and all(c.model.arch.startswith(arch) for c in cfgs)
        assert s.row("Cumulative Spatial KD CKF linear").paper == paper
        c = s.base.override({"data.root": str(tmp_path)})
        assert (c.data.mixup_alpha, c.data.cutmix_alpha, c.data.repeated_aug) == (0.8, 1.0, 3)
        with pytest.raises(DataNotFoundError, match="image-net.org"):
            check_data(c)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("cifar")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDRAY_DATA_PATH", str(shared_data))
        yield str(root)


def test_deit_recipe_batches_reach_the_method(cifar_root):
    from kdray.data import build_train_loader

    cfg = ExperimentConfig().override({
        "data.dataset": "cifar10", "data.root": cifar_root, "data.augment": "deit",
        "data.batch_size": 8, "data.mixup_alpha": 0.8, "data.cutmix_alpha": 1.0,
        "data.repeated_aug": 3})
    batch = next(iter(build_train_loader(cfg, rank=0, world=1)))
    assert batch.views[0].shape == (8, 3, 32, 32) and set(batch.mix) == {"lam", "box"}
    assert len(set(batch.index.tolist())) <= 3 and 0.0 <= batch.mix["lam"] <= 1.0


def test_smoke_cifar10_run_reports_every_ablation_row(cifar_root, tmp_path):
    from kdray.engine.runner import run_local, train
    from kdray.study.table import summarize_rows, write_results_md

    study = load_study("cskd_ablation").build("smoke")
    small = {"data.root": cifar_root, "train.epochs": 1, "train.steps_per_epoch": 3,
             "data.batch_size": 32, "eval.max_items": 200}
    teacher = study.base.override({"method": "ce", "model.arch": "conv3", **small})
    run_local(teacher, str(tmp_path / "teacher"))
    small["model.teacher_ckpt"] = str(tmp_path / "teacher" / "checkpoint.pt")
    trials = [{"label": r.label, "params": {}, "overrides": r.overrides, "paper": r.paper}
              for r in study.rows]
    trials.append({"label": "search", "params": {"method_cfg.alpha_end": 0.5,
                                                 "method_cfg.alpha_schedule": "cos"},
                   "overrides": {}, "paper": ""})
    rows = []
    for t in trials:
        cfg = study.base.override({**t["overrides"], **t["params"], **small})
        res = train(cfg)
        rows.append({"label": t["label"], "seed": 0, "params": t["params"], "metrics": res.metrics,
                     "run_id": None, "status": "finished", "paper": t["paper"],
                     "config": cfg.to_dict()})
        assert 0.0 <= res.metrics["test/top1"] <= 100.0 and math.isfinite(res.metrics["train/loss"])
        assert ("train/cskd" in res.metrics) == (cfg.method_cfg.w_cskd > 0)
    text = write_results_md(study, summarize_rows(study, rows),
                            str(tmp_path / "cskd_ablation_smoke.md"), header={})
    for label, _, _ in load_study("cskd_ablation").P.ROWS:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {label} |"))
        assert line.split("|")[3].strip() == "test"  # the split column, then top-1
        assert line.split("|")[4].strip() not in ("", "–")
    assert "Ti 76.3" in text and "alpha_end=0.5" in text
