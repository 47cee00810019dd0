"""Teacher-health signals: the collapse flag fires on a uniform or one-prototype teacher and stays
off on a healthy one; SMKD and M2SD log them with their loss terms."""

from __future__ import annotations

import math

import pytest
import torch

from kdray.modules.health import collapse_flag, teacher_health


def test_uniform_teacher_is_flagged():
    h = teacher_health(torch.full((16, 256), 1 / 256))
    assert h["t_entropy"].item() == pytest.approx(1.0, abs=1e-6)
    assert h["t_maxprob"].item() == pytest.approx(1 / 256)
    assert collapse_flag({f"train/{k}": float(v) for k, v in h.items()}) == "collapsed (uniform)"


def test_one_prototype_teacher_is_flagged():
    p = torch.full((16, 64), 1e-4)
    p[:, 7] = 1 - 63e-4
    h = teacher_health(p)
    assert h["t_one_prototype"].item() == 1.0 and h["t_entropy"].item() < 0.05
    assert collapse_flag({f"train/{k}": float(v) for k, v in h.items()}) == \
        "collapsed (one prototype)"


def test_healthy_teacher_is_ok_and_values_match_a_hand_computation():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    h = teacher_health(p)
    ent = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
           -(0.1 * math.log(0.1) * 2 + 0.8 * math.log(0.8))]
    assert h["t_entropy"].item() == pytest.approx(sum(ent) / 2 / math.log(3), rel=1e-6)
    assert h["t_maxprob"].item() == pytest.approx(0.75)
    assert h["t_one_prototype"].item() == 0.0
    assert collapse_flag({f"train/{k}": float(v) for k, v in h.items()}) == "ok"
    assert collapse_flag({"train/loss": 1.0}) == ""   # no self-distillation target: no verdict


@pytest.mark.parametrize("name", ["smkd", "m2sd"])
def test_self_distillation_methods_log_teacher_health(name, tmp_path):
    from test_methods import NUM_CLASSES, tiny_batch, tiny_config

    from kdray.methods import build_method
    from kdray.types import Step

    cfg = tiny_config(name, tmp_path)
    if name == "m2sd":
        assert cfg.method_cfg.enhance  # the default builds FE: its soft labels are the target
    out = build_method(cfg, NUM_CLASSES).train()(tiny_batch(cfg), Step(it=0, epoch=0, total_its=4))
    assert {"t_entropy", "t_maxprob", "t_one_prototype"} <= set(out)
    assert 0.0 <= out["t_entropy"].item() <= 1.0 + 1e-6
