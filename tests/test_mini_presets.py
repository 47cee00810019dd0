"""The `mini` evidence presets on the real data in ../shared/data (MKD: the generated shapes_det
set): each study builds, every row x seed config validates (the checks run before Ray), its
stages and every row train a few steps in-process and evaluate on the real split. The studies themselves (< 1 h each on 2 cores) are
not run here; their results are results/<study>_mini.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import load_study

from kdray.config import ExperimentConfig
from kdray.engine.preflight import preflight
from kdray.engine.runner import run_local
from kdray.study.spec import ROW_KEY

FEW = {"train.epochs": 1, "train.steps_per_epoch": 2, "train.log_every": 1, "eval.every": 1,
       "data.loader_workers": 0}


def _short(cfg: ExperimentConfig, **extra) -> ExperimentConfig:
    """`cfg` cut to 2 steps and a small evaluation on the same real split."""
    ev = ({"eval.episodes": 4, "eval.queries": 2} if cfg.eval.kind == "fewshot"
          else {"eval.max_items": 64})
    return cfg.override({**FEW, **ev, **extra})


def _stage(cfg: ExperimentConfig, out: Path) -> str:
    """A study stage, in-process: checked (preflight) and trained; its checkpoint."""
    preflight(cfg)
    run_local(cfg, str(out))
    return str(out / "checkpoint.pt")


def _rows(study, tmp: Path) -> dict[str, dict[str, float]]:
    """Every row x seed config built; every row checked (preflight) and trained 2 steps."""
    configs = study.validate()
    assert len(configs) == len(study.rows) * len(study.seeds) >= 9
    out = {}
    for row in study.rows:
        cfg = _short(study.trial_config({ROW_KEY: row.label}))
        preflight(cfg)
        res = run_local(cfg, str(tmp / row.label.replace(" ", "_").replace("/", "_")))
        out[row.label] = res.metrics
    return out


def _finite(metrics: dict[str, float], key: str) -> float:
    v = metrics[key]
    assert math.isfinite(v), (key, metrics)
    return v


@pytest.mark.slow
def test_smkd_mini_preset_runs_on_omniglot(shared_data, tmp_path):
    mod = load_study("smkd_ablation")
    study = mod.build("mini")
    assert study.base.data.dataset == "omniglot" and study.seeds == (0, 1, 2)
    assert study.metric == "acc_20w1s" and not study.space
    phase1 = _short(mod.phase1_config(study, "mini"))
    assert phase1.method_cfg.phase == "ssl"
    study = study.starting_from("train.init_from", _stage(phase1, tmp_path / "phase1"), "")
    metrics = _rows(study, tmp_path)
    for label, m in metrics.items():
        for way in (5, 20):
            acc = _finite(m, f"test/acc_{way}w1s")
            assert 0.0 <= acc <= 100.0, (label, m)
    assert "train/t_entropy" in metrics[study.rows[-1].label]   # teacher health is logged


def test_smkd_mini_rows_carry_the_labels_the_ledger_looks_up():
    """The ledger finds a study's rows by label: every SMKD paper cell's row must be a mini row,
    so the mini numbers land on its ledger line (they did not while the mini rows were named
    "phase 2 full: ...")."""
    from kdray.ledger.cells import load_cells

    labels = {r.label for r in load_study("smkd_ablation").build("mini").rows}
    wanted = {row for c in load_cells() if c.study == "smkd_ablation" for row in c.rows}
    assert wanted and wanted <= labels, wanted - labels


@pytest.mark.slow
def test_sskd_mini_preset_runs_on_cifar10(shared_data, tmp_path):
    mod = load_study("sskd_ablation")
    P = mod.P
    study = mod.build("mini")
    base = study.base
    assert base.data.dataset == "cifar10" and study.seeds == tuple(range(10)) and not study.space
    assert [r.label for r in study.rows] == ["CE only", "KD", "SSKD full (ratio_ss=0.75)"]
    t1 = _short(base.override({**P.TEACHER["mini"], "model.arch": base.model.teacher_arch,
                               "model.teacher_arch": ""}))
    t2 = _short(base.override({**P.SS_HEAD["mini"],
                               "model.teacher_ckpt": _stage(t1, tmp_path / "t1")}))
    study = study.starting_from("model.teacher_ckpt", _stage(t2, tmp_path / "t2"), "")
    metrics = _rows(study, tmp_path)
    for label, m in metrics.items():
        assert 0.0 <= _finite(m, "test/top1") <= 100.0, (label, m)
    assert metrics["SSKD full (ratio_ss=0.75)"]["train/ss"] > 0   # the SS term is on


@pytest.mark.slow
def test_cskd_mini_preset_runs_on_cifar10(shared_data, tmp_path):
    mod = load_study("cskd_ablation")
    P = mod.P
    study = mod.build("mini")
    assert study.base.data.dataset == "cifar10" and study.seeds == (0, 1, 2) and not study.space
    assert [r.label for r in study.rows] == ["DeiT no distillation", "DeiT hard distillation",
                                             "Cumulative Spatial KD CKF linear"]
    assert study.claims == (("Cumulative Spatial KD CKF linear", "DeiT hard distillation"),
                            ("DeiT hard distillation", "DeiT no distillation"))
    teacher = _short(study.base.override(P.TEACHER["mini"]))
    study = study.starting_from("model.teacher_ckpt", _stage(teacher, tmp_path / "teacher"), "")
    metrics = _rows(study, tmp_path)
    for label, m in metrics.items():
        assert 0.0 <= _finite(m, "test/top1") <= 100.0, (label, m)
    assert metrics["Cumulative Spatial KD CKF linear"]["train/cskd"] > 0   # the dense term is on


@pytest.mark.slow
def test_m2sd_mini_preset_runs_on_fscil_cifar10(shared_data, tmp_path):
    mod = load_study("m2sd_ablation")
    study = mod.build("mini")
    assert study.base.data.dataset == "fscil_cifar10" and study.seeds == (0, 1, 2)
    assert study.base.optim.lr == 1e-3 and not study.space
    assert [r.label for r in study.rows] == ["prototype baseline (CE continued)",
                                             "+ mixup branch",
                                             "+ attention enhancement (full M2SD)"]
    assert study.claims == (("+ attention enhancement (full M2SD)",
                             "prototype baseline (CE continued)"),)
    # real CIFAR-10, with CIFAR-100 references labelled as such (not "generated data")
    assert "generated" not in study.description and "labelled C100" in study.description
    assert study.rows[0].paper.startswith("C100 ") and "generated data" in mod.build(
        "smoke").description
    stage1 = _short(mod.stage1_config(study, "mini"), **{"eval.kind": "none"})
    study = study.starting_from("train.init_from", _stage(stage1, tmp_path / "stage1"), "")
    assert len(study.validate()) == 9
    # the FSCIL evaluation reads all 10,000 test images: only the full row is evaluated here
    for row in study.rows:
        full = row.label == study.rows[-1].label
        cfg = _short(study.trial_config({ROW_KEY: row.label}),
                     **({} if full else {"eval.kind": "none"}))
        preflight(cfg)
        res = run_local(cfg, str(tmp_path / row.label.replace(" ", "_")))
        assert math.isfinite(res.metrics["train/loss"]), (row.label, res.metrics)
    assert 0.0 <= _finite(res.metrics, "test/fscil_avg") <= 100.0, res.metrics
    assert res.metrics["train/at"] >= 0 and res.metrics["train/sd"] >= 0  # the FE terms are on


@pytest.mark.slow
def test_mkd_mini_preset_runs_on_generated_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("KDRAY_CACHE_DIR", str(tmp_path / "cache"))   # shapes_det is generated
    mod = load_study("mkd_ablation")
    P = mod.P
    study = mod.build("mini")
    assert study.base.data.dataset == "shapes_det" and study.seeds == (0, 1, 2)
    assert study.metric == "AP" and not study.space
    assert [r.label for r in study.rows] == ["Student alone",
                                             "Feature MSE, no masking (FGD-style, 1x1 align)",
                                             "+ global loss (MKD full)"]
    # the mini tier's global weight is the one chosen on val (docs/methods/mkd.md §2.10)
    assert study.base.method_cfg.w_global == P.MINI_W_GLOBAL == 5e-6
    assert study.claims == (("+ global loss (MKD full)", "Student alone"),
                            ("+ global loss (MKD full)",
                             "Feature MSE, no masking (FGD-style, 1x1 align)"))
    teacher = _short(study.base.override(P.TEACHER["mini"]))
    assert teacher.model.arch == "resnet34" and not teacher.method_cfg.uses_teacher
    study = study.starting_from("model.teacher_ckpt", _stage(teacher, tmp_path / "teacher"), "")
    metrics = _rows(study, tmp_path)
    for label, m in metrics.items():
        assert 0.0 <= _finite(m, "test/AP50") <= 1.0, (label, m)
    full = metrics["+ global loss (MKD full)"]
    assert full["train/feat"] > 0 and full["train/global"] > 0   # both distillation terms are on
    assert "train/feat" not in metrics["Student alone"]
