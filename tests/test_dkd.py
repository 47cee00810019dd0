"""Decoupled KD: TCKD and NCKD against hand computations, the KD decomposition of the paper's
Eq. 1, the warm-up, the study presets, and the method end to end on a few steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdray.config import ConfigError, ExperimentConfig
from kdray.methods.dkd import losses as L
from kdray.modules.losses import kl_div
from kdray.types import Batch, Step


def _softmax(z: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


def _hand(s: list[float], t: list[float], y: int, tau: float) -> tuple[float, float]:
    """TCKD and NCKD of one row, written out from the paper's definitions."""
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    bs, bt = (ps[y], 1 - ps[y]), (pt[y], 1 - pt[y])
    tckd = sum(b * math.log(b / a) for a, b in zip(bs, bt))
    qs = [p / (1 - ps[y]) for i, p in enumerate(ps) if i != y]
    qt = [p / (1 - pt[y]) for i, p in enumerate(pt) if i != y]
    nckd = sum(b * math.log(b / a) for a, b in zip(qs, qt))
    return tckd * tau * tau, nckd * tau * tau


S = [[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5]]
T = [[3.0, 0.0, -1.0, 1.0], [-0.5, 0.1, 0.2, 2.5]]
Y = [0, 3]


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_tckd_and_nckd_equal_a_hand_computation(tau):
    s, t = torch.tensor(S, dtype=torch.float64), torch.tensor(T, dtype=torch.float64)
    y = torch.tensor(Y)
    rows = [_hand(S[i], T[i], Y[i], tau) for i in range(2)]
    tck = L.tckd(s, t, y, tau, reduction="none")
    nck = L.nckd(s, t, y, tau, reduction="none")
    for i, (a, b) in enumerate(rows):
        assert tck[i].item() == pytest.approx(a, rel=1e-10)
        assert nck[i].item() == pytest.approx(b, rel=1e-10)
    assert L.tckd(s, t, y, tau).item() == pytest.approx(sum(r[0] for r in rows) / 2, rel=1e-10)
    assert L.nckd(s, t, y, tau).item() == pytest.approx(sum(r[1] for r in rows) / 2, rel=1e-10)
    # float32 (what training uses): within float32 rounding of the same values
    s32, t32 = s.float(), t.float()
    assert L.tckd(s32, t32, y, tau, "none").tolist() == pytest.approx([r[0] for r in rows], rel=1e-4)
    assert L.nckd(s32, t32, y, tau, "none").tolist() == pytest.approx([r[1] for r in rows], rel=1e-4)


def test_kd_is_tckd_plus_weighted_nckd_per_row():
    """Eq. 1 of the paper: KD = TCKD + (1 - p_t^T) NCKD, row by row."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    tau = 2.0
    p_t_target = F.softmax(t / tau, dim=1).gather(1, y[:, None]).squeeze(1)
    dkd_rows = L.tckd(s, t, y, tau, "none") + (1 - p_t_target) * L.nckd(s, t, y, tau, "none")
    kd_rows = kl_div(s, t, tau, reduction="none") * tau * tau  # "none": rows, no tau^2
    torch.testing.assert_close(dkd_rows, kd_rows, rtol=1e-5, atol=1e-6)


def test_nckd_matches_the_official_minus_1000_masking():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 100, generator=g), torch.randn(8, 100, generator=g)
    y = torch.randint(0, 100, (8,), generator=g)
    tau = 4.0
    gt = F.one_hot(y, 100).float()
    log_s = F.log_softmax(s / tau - 1000.0 * gt, dim=1)
    p_t = F.softmax(t / tau - 1000.0 * gt, dim=1)
    official = F.kl_div(log_s, p_t, reduction="sum") * tau * tau / 8
    assert L.nckd(s, t, y, tau).item() == pytest.approx(official.item(), rel=1e-5)


def test_terms_vanish_when_student_equals_teacher_and_gradients_are_finite():
    s = torch.tensor(S, requires_grad=True)
    y = torch.tensor(Y)
    assert L.tckd(s, s.detach(), y, 4.0).abs().item() < 1e-6
    assert L.nckd(s, s.detach(), y, 4.0).abs().item() < 1e-6
    big = torch.tensor([[60.0, -60.0, 0.0, 0.0]], requires_grad=True)  # p_t ~ 1 in float32
    loss = L.tckd(big, torch.zeros(1, 4), torch.tensor([0]), 1.0) + L.nckd(
        big, torch.zeros(1, 4), torch.tensor([0]), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()


def test_warmup_is_linear_over_epochs_then_one():
    assert [L.warmup_factor(e, 20.0) for e in (0, 9, 19, 30)] == [0.05, 0.5, 1.0, 1.0]
    assert L.warmup_factor(0, 0.0) == 1.0


def _teacher_file(tmp_path) -> str:
    from kdray.modules.backbones import Classifier, build_backbone

    path = tmp_path / "t.pt"
    torch.manual_seed(0)
    torch.save({"model": {"student": Classifier(build_backbone("conv2", image_size=16), 4)
                          .state_dict()}}, path)
    return str(path)


def test_method_loss_is_the_weighted_sum_with_warmup(tmp_path):
    from kdray.methods import build_method

    cfg = ExperimentConfig().override({"method": "dkd", "model.arch": "conv2",
                                       "data.image_size": 16, "model.teacher_ckpt":
                                       _teacher_file(tmp_path), "method_cfg.w_nckd": 2.0})
    torch.manual_seed(0)
    m = build_method(cfg, 4).train()
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    out = m(Batch(views=[x], labels=y), Step(it=0, epoch=4, total_its=10))
    f = 5 / 20
    expect = out["ce"] + f * (1.0 * out["tckd"] + 2.0 * out["nckd"])
    assert out["kd_warmup"].item() == f
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-6)
    s, t = m.student(x).logits, m.teacher(x).logits
    assert out["nckd"].item() == pytest.approx(L.nckd(s, t, y, 4.0).item(), rel=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="tau"):
        ExperimentConfig().override({"method": "dkd", "method_cfg.tau": 0.0})
    with pytest.raises(ConfigError, match="w_"):
        ExperimentConfig().override({"method": "dkd", "method_cfg.w_ce": 0.0,
                                     "method_cfg.w_tckd": 0.0, "method_cfg.w_nckd": 0.0})


def test_study_presets_build_validate_and_carry_the_official_betas_and_numbers():
    from helpers import load_study

    from kdray.presets import dkd as P

    study = load_study("dkd_ablation")
    for preset, (teacher, student, beta, kd, dkd) in P.PAIRS.items():
        s = study.build(preset)
        cfgs = s.validate()
        assert len(cfgs) >= len(s.rows)
        assert (s.base.model.teacher_arch, s.base.model.arch) == (teacher, student)
        assert s.base.method_cfg.w_nckd == beta and s.base.train.epochs == 240
        assert s.row("DKD").paper == dkd and s.row("KD (tau 4, CE 0.1 / KD 0.9)").paper == kd
        assert s.row("CE student").paper == ""
    smoke = study.build("smoke")
    assert {r.label for r in smoke.rows} >= {"CE student", "KD (tau 4, CE 0.1 / KD 0.9)", "DKD"}
    assert smoke.row("DKD").paper == ""  # CIFAR-10 smoke is not a CIFAR-100 cell
    assert set(smoke.space) == {"method_cfg.w_tckd", "method_cfg.w_nckd", "method_cfg.tau"}
    ce, kd = (smoke.trial_config({"row": r, "seed": 0}) for r in ("CE student",
                                                                  "KD (tau 4, CE 0.1 / KD 0.9)"))
    assert (ce.method, kd.method, kd.method_cfg.w_ce, kd.method_cfg.tau) == ("ce", "kd", 0.1, 4.0)


def test_a_few_dkd_steps_on_real_cifar10(tmp_path, shared_data):
    """The smoke setting end to end in one process: CIFAR-10 JPEGs from ../shared/data, a conv4
    teacher checkpoint (random weights: this checks the pipeline, not the effect)."""
    from kdray.engine.runner import run_local
    from kdray.modules.backbones import Classifier, build_backbone
    from kdray.presets import dkd as P

    path = tmp_path / "teacher.pt"
    torch.save({"model": {"student": Classifier(build_backbone("conv4", image_size=16), 10)
                          .state_dict()}}, path)
    cfg = ExperimentConfig(method="dkd").override({
        **P.SMOKE, "data.root": str(shared_data), "model.teacher_ckpt": str(path),
        "train.epochs": 1, "train.steps_per_epoch": 3, "eval.max_items": 64})
    res = run_local(cfg, str(tmp_path / "run"))
    m = res.metrics
    assert m["train/kd_warmup"] == 0.5 and m["train/tckd"] > 0 and m["train/nckd"] > 0
    assert 0.0 <= m["test/top1"] <= 100.0
