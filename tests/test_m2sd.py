"""M2SD: pair mixing, losses, FE module, CIFAR ResNets, stage-3 prototypes, end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdray.config import ConfigError, ExperimentConfig
from kdray.data import build_eval_dataset
from kdray.engine.loop import seed_all
from kdray.engine.runner import run_local
from kdray.eval.fscil import FscilEvaluator
from kdray.methods import build_method
from kdray.methods.m2sd.enhance import (
    BiFPN,
    CoordAttention,
    FeatureEnhancer,
    SpatialMHSA,
    default_layout,
    fast_normalized_weights,
)
from kdray.methods.m2sd.losses import at_loss, attention_map, soft_label_kl, symmetric_kl
from kdray.modules import mixing
from kdray.modules.backbones import build_backbone
from kdray.types import Batch, Step


def tiny(**over) -> ExperimentConfig:
    base = {"method": "m2sd", "model.arch": "resnet8", "data.image_size": 16}
    return ExperimentConfig().override({**base, **over})


# ---------------------------------------------------------------------------- mixing
def test_partner_is_of_another_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    for seed in range(20):
        scores = torch.rand(6, 6, generator=torch.Generator().manual_seed(seed))
        j = mixing.different_class_partner(labels, scores)
        assert (labels[j] != labels).all()
    same = mixing.different_class_partner(torch.zeros(3, dtype=torch.long), torch.rand(3, 3))
    assert same.tolist() == [0, 1, 2]  # no other class: paired with itself


def test_inside_box_and_lambda():
    rng = np.random.RandomState(0)
    for lam in rng.beta(0.5, 0.5, size=200):
        (y0, y1, x0, x1), lam_c = mixing.inside_cutmix_box(rng, 32, 24, float(lam))
        assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 24
        assert y1 - y0 == round(32 * math.sqrt(1 - lam)) and x1 - x0 == round(24 * math.sqrt(1 - lam))
        assert lam_c == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (32 * 24))


def test_pair_images_and_targets():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    j = torch.tensor([1, 0])
    torch.testing.assert_close(mixing.pair_mixup(x, j, 0.25)[0], 0.25 * x[0] + 0.75 * x[1])
    cut = mixing.pair_cutmix(x, j, (0, 1, 1, 2))
    assert cut[0, 0].tolist() == [[0.0, 5.0], [2.0, 3.0]]
    t = mixing.pair_targets(torch.tensor([2, 0]), j, 0.25, 3)
    torch.testing.assert_close(t, torch.tensor([[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]))


def test_both_branches_share_pairs_and_labels():
    seed_all(0)
    method = build_method(tiny(**{"method_cfg.w_sd": 0.0, "method_cfg.w_at": 0.0}), 4).train()
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    step = Step(it=3, epoch=0, total_its=10)
    out = method(Batch(views=[x], labels=y), step)
    j, lam, box = method._draw(y, 16, 16, step)
    inputs = torch.cat([x, mixing.pair_mixup(x, j, lam), mixing.pair_cutmix(x, j, box)])
    z = method.student(inputs).logits.split(8)
    target = mixing.pair_targets(y, j, lam, 4)
    want = mixing.soft_target_ce(z[1], target) + mixing.soft_target_ce(z[2], target)
    torch.testing.assert_close(out["mix"], want.detach())
    torch.testing.assert_close(out["kl"], symmetric_kl(z[1], z[2]).detach())


# ---------------------------------------------------------------------------- losses
def test_symmetric_kl_hand():
    a, b = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    p, q = np.array([0.25, 0.75]), np.array([0.5, 0.5])
    want = (p * np.log(p / q)).sum() + (q * np.log(q / p)).sum()
    assert symmetric_kl(a, b).item() == pytest.approx(want, rel=1e-6)
    assert symmetric_kl(b, a).item() == pytest.approx(want, rel=1e-6)
    assert soft_label_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    # temperature: softmax(z / T), times T^2
    assert soft_label_kl(2 * a, b, 2.0).item() == pytest.approx(4 * (p * np.log(p / q)).sum(), rel=1e-6)


def test_attention_transfer_hand():
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    s = torch.ones(1, 3, 2, 2)
    at_t = np.array([2.0, 4.0, 0.0, 0.0]) / math.sqrt(20.0)  # Σ_c F², L2-normalised
    at_s = np.full(4, 0.5)
    torch.testing.assert_close(attention_map(t)[0], torch.tensor(at_t, dtype=torch.float32))
    want = ((at_t - at_s) ** 2).sum()
    assert at_loss([t, t], [s, s]).item() == pytest.approx(2 * want, rel=1e-6)


# ---------------------------------------------------------------------------- FE module
def test_coordinate_attention_shape_and_gates():
    ca = CoordAttention(16, reduction=32)
    x = torch.randn(2, 16, 6, 5)
    assert ca(x).shape == x.shape and ca.reduce[0].out_channels == 8  # min 8 channels
    for conv in (ca.gate_h, ca.gate_w):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    torch.testing.assert_close(ca(x), x * 0.25)  # sigmoid(0)^2


def test_mhsa_shape_pooled():
    m = SpatialMHSA(16, heads=4, max_side=8)
    assert m(torch.randn(2, 16, 32, 32)).shape == (2, 16, 32, 32)
    assert m(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)


def test_bifpn_shapes_and_weights():
    torch.testing.assert_close(fast_normalized_weights(torch.tensor([1.0, 3.0, -2.0])),
                               torch.tensor([1.0, 3.0, 0.0]) / (4.0 + 1e-4))
    fpn = BiFPN((16, 32, 64, 128), channels=24)
    feats = [torch.randn(2, c, s, s) for c, s in ((16, 16), (32, 8), (64, 4), (128, 2))]
    out = fpn(feats)
    assert [tuple(o.shape) for o in out] == [(2, 24, s, s) for s in (16, 8, 4, 2)]
    assert [len(w) for w in fpn.bu_weights] == [3, 3, 2] and len(fpn.td_weights) == 3


def test_feature_enhancer_layouts():
    assert default_layout(3) == ("mhsa", "ca", "mhsa")
    assert default_layout(4) == ("mhsa", "ca", "ca", "mhsa")
    fe = FeatureEnhancer((16, 32, 64), 7, channels=32)
    assert [type(b).__name__ for b in fe.en] == ["SpatialMHSA", "CoordAttention", "SpatialMHSA"]
    maps = build_backbone("resnet8").forward_stages(torch.randn(2, 3, 16, 16))
    enhanced, logits = fe(maps)
    assert [e.shape[-2:] for e in enhanced] == [m.shape[-2:] for m in maps]
    assert logits.shape == (2, 7)


# ---------------------------------------------------------------------------- backbones
def test_cifar_resnets():
    n = {k: sum(p.numel() for p in build_backbone(k).parameters())
         for k in ("resnet20", "resnet32x4")}
    assert 0.26e6 < n["resnet20"] < 0.28e6 and 7.3e6 < n["resnet32x4"] < 7.5e6  # CRD table sizes
    net = build_backbone("resnet20")
    x = torch.randn(2, 3, 32, 32)
    maps = net.forward_stages(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    torch.testing.assert_close(net(x), maps[-1].mean(dim=(2, 3)))
    r18 = build_backbone("resnet18")
    assert r18.num_features == 512 and len(r18.forward_stages(torch.randn(1, 3, 64, 64))) == 4


# ---------------------------------------------------------------------------- method
def test_config_validation():
    with pytest.raises(ConfigError, match="w_aux"):
        tiny(**{"method_cfg.w_aux": 0.0})
    with pytest.raises(ConfigError, match="every term is off"):
        tiny(**{"method_cfg.mixup": False, "method_cfg.cutmix": False, "method_cfg.w_sd": 0.0,
                "method_cfg.w_at": 0.0})
    with pytest.raises(ConfigError, match="forward_stages"):
        build_method(tiny(**{"model.arch": "conv2"}), 4)
    m = build_method(tiny(**{"method_cfg.w_sd": 0.0, "method_cfg.w_at": 0.0}), 4)
    assert m.student.fe is None  # built only when used


def test_distill_warmup_ramps_sd_and_at_only():
    """method_cfg.distill_warmup=2 (epochs of 10 steps): at step 5 the loss is
    mix + kl + aux + 0.25 (sd + at), recomputed by hand from the logged terms; at step 20 the
    full paper total; warmup 0 keeps the paper total from the first step."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    batch = Batch(views=[x], labels=torch.tensor([0, 1, 2, 3] * 2))
    for warmup, it, ramp in ((2.0, 5, 0.25), (2.0, 20, 1.0), (0.0, 0, 1.0)):
        torch.manual_seed(1)
        m = build_method(tiny(**{"method_cfg.distill_warmup": warmup}), 4)
        out = m(batch, Step(it=it, epoch=it // 10, total_its=40, its_per_epoch=10))
        want = out["mix"] + out["kl"] + out["aux"] + ramp * (out["sd"] + out["at"])
        assert float(out["distill_ramp"]) == ramp
        assert torch.allclose(out["loss"], want, atol=1e-6), (warmup, it)


@pytest.fixture(scope="module")
def synth_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2sd")
    return ExperimentConfig().override({
        "method": "ce", "data.dataset": "fscil_synthetic", "data.synthetic_per_class": 12,
        "data.root": str(root / "data"), "data.train_split": "base", "data.batch_size": 32,
        "data.image_size": 32, "model.arch": "resnet8", "train.epochs": 1,
        "train.steps_per_epoch": 3, "eval.kind": "fscil", "eval.split": "test",
        "resources.cpus_per_worker": 1}), root


@pytest.mark.slow  # ~8-11 s: two evaluations on 1,400 images
def test_stage3_prototypes_are_class_means_of_frozen_features(synth_cfg):
    cfg, _ = synth_cfg
    cfg = cfg.override({"method": "m2sd"})
    seed_all(0)
    method = build_method(cfg, 60)
    ev = FscilEvaluator(cfg, build_eval_dataset(cfg))
    res = ev(method, "cpu")
    method.eval()
    with torch.no_grad():  # by hand: backbone only, class means, cosine, argmax
        tr = torch.stack([ev.train[i][0] for i in range(len(ev.train))])
        te = torch.stack([ev.test[i][0] for i in range(len(ev.test))])
        f_tr, f_te = method.student.backbone(tr), method.student.backbone(te)
    y_tr, y_te = torch.tensor(ev.train.targets), torch.tensor(ev.test.targets)
    protos = torch.stack([f_tr[y_tr == c].mean(0) for c in range(100)])
    pred = (F.normalize(f_te, dim=1) @ F.normalize(protos, dim=1).T).argmax(1)
    assert res.metrics["test/fscil_s8"] == pytest.approx(100 * (pred == y_te).float().mean().item())
    with torch.no_grad():  # FE is train-only: perturbing it leaves the features alone
        for p in method.student.fe.parameters():
            p.add_(1.0)
    assert ev(method, "cpu").metrics == res.metrics


@pytest.mark.slow
def test_end_to_end_ce_then_m2sd(synth_cfg):
    cfg, root = synth_cfg
    run_local(cfg, str(root / "stage1"))
    ckpt = str(root / "stage1" / "checkpoint.pt")
    res = run_local(cfg.override({"method": "m2sd", "train.init_from": ckpt}), str(root / "stage2"))
    m = res.metrics
    assert {f"test/fscil_s{t}" for t in range(9)} <= set(m)
    assert m["test/fscil_avg"] == pytest.approx(np.mean([m[f"test/fscil_s{t}"] for t in range(9)]))
    assert m["test/fscil_pd"] == pytest.approx(m["test/fscil_s0"] - m["test/fscil_s8"])
    assert all(math.isfinite(m[f"train/{k}"]) for k in ("mix", "kl", "sd", "at", "aux"))
