"""Every study that trains its own teacher registers it the same way (kdray.runtime.teacher_stage):
a card beside the checkpoint and a line in <results_dir>/teachers.json, holding the score the
stage measured (box AP as %), and the rows start from that checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from helpers import load_study

from kdray.modules.teachers import file_sha256, read_card
from kdray.runtime import driver


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """study_stage without Ray or MLflow: writes a checkpoint-shaped file per stage and reports
    the given metrics."""
    seen = []

    def fake(study, args, cfg, suffix, metrics):
        path = tmp_path / f"{study.name}-{suffix}.pt"
        path.write_bytes(suffix.encode())
        seen.append((suffix, cfg))
        return driver.StageResult(str(path), metrics, None, False)

    def install(metrics):
        monkeypatch.setattr(driver, "study_stage",
                            lambda study, args, cfg, suffix: fake(study, args, cfg, suffix, metrics))
        return seen

    return install


def _args(tmp_path, preset="smoke"):
    return SimpleNamespace(preset=preset, results_dir=str(tmp_path / "results"),
                           storage_path=None, tracking_uri=None, address=None)


@pytest.mark.parametrize("study, suffix", [("cskd_ablation", "teacher"),
                                          ("dkd_ablation", "teacher-")])
def test_classifier_teachers_are_registered_with_their_top1(study, suffix, fake_stages,
                                                           tmp_path, capsys):
    mod = load_study(study)
    seen = fake_stages({"test/top1": 71.25, "test/top5": 98.0})
    s = mod.build("smoke")
    out = mod.with_teacher(s, _args(tmp_path))
    ckpt = out.base.model.teacher_ckpt
    (got_suffix, cfg), = seen
    assert got_suffix.startswith(suffix) and ckpt.endswith(f"{s.name}-{got_suffix}.pt")
    card = read_card(ckpt)
    assert card.top1 == 71.25 and card.metric == "top1" and card.eval_split == "test"
    assert card.arch == cfg.model.arch and card.dataset == cfg.data.dataset
    assert card.sha256 == file_sha256(ckpt)
    registry = json.loads((tmp_path / "results" / "teachers.json").read_text())
    assert registry[card.sha256]["top1"] == 71.25
    assert f"top-1 71.25% ({ckpt}, sha256 {card.sha256[:12]})" in capsys.readouterr().out
    assert "top-1 71.25%" in out.description


def test_a_detector_teacher_is_registered_with_its_box_ap_as_percent(fake_stages, tmp_path,
                                                                     capsys):
    mod = load_study("mkd_ablation")
    fake_stages({"test/AP": 0.4567, "test/AP50": 0.6})
    out = mod.with_teacher(mod.build("smoke"), _args(tmp_path))
    card = read_card(out.base.model.teacher_ckpt)
    assert card.metric == "AP" and card.top1 == pytest.approx(45.67) and card.arch == "resnet34"
    assert "teacher RetinaNet-resnet34: AP 0.457 (" in capsys.readouterr().out
    assert "Teacher RetinaNet-resnet34: AP 0.457." in out.description


def test_a_given_teacher_checkpoint_trains_nothing(fake_stages, tmp_path):
    seen = fake_stages({"test/top1": 50.0})
    for name in ("cskd_ablation", "dkd_ablation", "mkd_ablation"):
        mod = load_study(name)
        s = mod.build("smoke")
        s = s.starting_from("model.teacher_ckpt", "/given/teacher.pt", "")
        assert mod.with_teacher(s, _args(tmp_path)).base.model.teacher_ckpt == "/given/teacher.pt"
    assert seen == [] and not (tmp_path / "results" / "teachers.json").exists()
