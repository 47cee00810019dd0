"""Teacher-health signals: the collapse flag fires on a uniform or one-prototype teacher and stays
off on a healthy one; SMKD and M2SD log them with their loss terms; the results table shows the
verdict (and a classifier teacher's checks) per trial and per setting."""

from __future__ import annotations

import math

import pytest
import torch

from kdray.config import ExperimentConfig
from kdray.modules.health import collapse_flag, teacher_health
from kdray.study import Row, Study
from kdray.study.table import summarize_rows, write_results_md


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


def _trial(label: str, seed: int, metrics: dict) -> dict:
    return {"label": label, "seed": seed, "params": {}, "status": "finished", "run_id": None,
            "metrics": {"test/top1": 50.0 + seed, "epoch": 1, **metrics}}


def test_rendered_table_shows_collapse_and_teacher_checks(tmp_path):
    """Synthetic trial records: a uniform-teacher trial reads "collapsed (uniform)", a healthy one
    "ok", a trial without a self-distillation target none; a KD trial its teacher cell."""
    study = Study(name="h", base=ExperimentConfig(), metric="top1", rows=(Row("A", {}),),
                  columns=(("top-1", "top1"),))
    uniform = {"train/t_entropy": 0.999, "train/t_maxprob": 0.01, "train/t_one_prototype": 0.0}
    healthy = {"train/t_entropy": 0.41, "train/t_maxprob": 0.62, "train/t_one_prototype": 0.0}
    kd = {"test/teacher_top1": 48.9, "test/teacher_card_top1": 61.0, "test/agreement": 73.1}
    trials = [_trial("smkd", 0, uniform), _trial("smkd", 1, healthy), _trial("ce", 0, {}),
              _trial("kd", 0, kd)]
    text = write_results_md(study, summarize_rows(study, trials), str(tmp_path / "h.md"),
                            header={})
    assert "| setting | seed | split | top-1 | health | teacher | paper |" in text
    line = {(ln.split("|")[1].strip(), ln.split("|")[2].strip()): ln.split("|")
            for ln in text.splitlines() if ln.startswith("| ") and "|---" not in ln}
    assert line[("smkd", "0")][5].strip() == "collapsed (uniform)"
    assert line[("smkd", "1")][5].strip() == "ok"
    assert line[("ce", "0")][5].strip() == "–" and line[("ce", "0")][6].strip() == "–"
    assert line[("kd", "0")][6].strip() == "teacher 48.9% (card 61.0%!), agree 73.1%"
    summary = text.split("Per setting over its seeds")[1]
    assert "| setting | n | top-1 | health |" in summary
    assert "| smkd | 2 | 50.50 ± 0.71 | collapsed (uniform) 1/2, ok 1/2 |" in summary
    plain = write_results_md(study, summarize_rows(study, [_trial("ce", 0, {})]),
                             str(tmp_path / "p.md"), header={})
    assert "health" not in plain and "teacher" not in plain  # no check, no column
