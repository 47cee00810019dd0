"""Teacher checks of the top-1 evaluator: a classifier teacher's own top-1 on the eval split
(measured once, next to its registry card's) and its argmax agreement with the student, summed
over ranks like the student's top-1; the table cell that flags a card mismatch; the on-disk cache
of a frozen teacher's predictions (kdray.eval.teacher_cache)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import gloo_group
from torch.utils.data import TensorDataset

from kdray.config import ExperimentConfig
from kdray.eval import Top1Evaluator
from kdray.eval.teacher_cache import teacher_key
from kdray.methods import build_method
from kdray.modules.backbones import Classifier, build_backbone
from kdray.modules.teachers import write_card
from kdray.study.table import teacher_cell

N_IMAGES, N_CLASSES = 101, 6   # odd size: shards of 51 and 50 over two ranks


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Each test its own teacher-prediction cache (spawned ranks inherit the variable)."""
    monkeypatch.setenv("KDRAY_CACHE_DIR", str(tmp_path / "cache"))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N_IMAGES, 3, 16, 16, generator=g),
                         torch.arange(N_IMAGES) % N_CLASSES)


@torch.no_grad()
def _spread(net: Classifier, seed: int) -> Classifier:
    """A random head centred on the data's mean feature, so that a random network predicts
    varied classes (the raw init gives one class for every image)."""
    torch.manual_seed(seed)
    net.eval()
    net.head.weight.copy_(torch.randn_like(net.head.weight))
    net.head.bias.copy_(-net.head.weight @ net(_data().tensors[0]).feat.mean(0))
    return net


def _teacher_ckpt(tmp: Path, seed: int = 1) -> str:
    torch.manual_seed(seed)
    teacher = _spread(Classifier(build_backbone("conv2", image_size=16), N_CLASSES), seed)
    path = tmp / f"teacher{seed}.pt"
    torch.save({"model": {"student": teacher.state_dict()}}, path)
    return str(path)


def _kd(ckpt: str, method: str = "kd", **extra) -> tuple[ExperimentConfig, torch.nn.Module]:
    cfg = ExperimentConfig().override({
        "method": method, "model.arch": "conv2", "model.teacher_ckpt": ckpt,
        "data.image_size": 16, "eval.kind": "top1", "eval.batch_size": 16, **extra})
    torch.manual_seed(0)
    return cfg, build_method(cfg, N_CLASSES)


def _by_hand(method, data: TensorDataset) -> tuple[float, float]:
    """(agreement, teacher top-1) in percent over the whole dataset."""
    x, y = data.tensors
    method.eval()
    s, t = method.logits(x).argmax(1), method.teacher_logits(x).argmax(1)
    return 100.0 * (s == t).double().mean().item(), 100.0 * (t == y).double().mean().item()


def test_teacher_equal_to_student_agrees_everywhere(tmp_path):
    cfg, method = _kd(_teacher_ckpt(tmp_path))
    method.student.load_state_dict(method.teacher.state_dict())
    m = Top1Evaluator(cfg, _data())(method, "cpu").metrics
    assert m["test/agreement"] == 100.0
    assert m["test/teacher_top1"] == m["test/top1"]
    assert "test/teacher_card_top1" not in m  # no registry card beside the checkpoint


def test_agreement_and_teacher_top1_by_hand_teacher_measured_once(tmp_path, monkeypatch):
    cfg, method = _kd(_teacher_ckpt(tmp_path))
    _spread(method.student, 0)
    data, ev = _data(), Top1Evaluator(cfg, _data())
    first = ev(method, "cpu").metrics
    agree, t_top1 = _by_hand(method, data)
    assert 0.0 < agree < 100.0
    assert first["test/agreement"] == pytest.approx(agree, abs=1e-9)
    assert first["test/teacher_top1"] == pytest.approx(t_top1, abs=1e-9)
    # later evaluations: agreement of the new student, the frozen teacher is not run again
    _spread(method.student, 5)
    with monkeypatch.context() as mp:
        mp.setattr(method, "teacher_logits", lambda x: pytest.fail("teacher run twice"))
        second = ev(method, "cpu").metrics
    assert second["test/agreement"] == pytest.approx(_by_hand(method, data)[0], abs=1e-9)
    assert second["test/agreement"] != first["test/agreement"]
    assert second["test/teacher_top1"] == first["test/teacher_top1"]


@pytest.mark.parametrize("name, extra", [("dkd", {}), ("sskd", {"method_cfg.w_ss": 0.0})])
def test_other_classifier_teachers_report_agreement(tmp_path, name, extra):
    cfg, method = _kd(_teacher_ckpt(tmp_path), name, **extra)
    m = Top1Evaluator(cfg, _data())(method, "cpu").metrics
    agree, t_top1 = _by_hand(method, _data())
    assert m["test/agreement"] == pytest.approx(agree, abs=1e-9)
    assert m["test/teacher_top1"] == pytest.approx(t_top1, abs=1e-9)


def test_methods_without_a_classifier_teacher_report_no_teacher_metrics():
    cfg = ExperimentConfig().override({"method": "ce", "model.arch": "conv2",
                                       "data.image_size": 16, "eval.kind": "top1"})
    m = Top1Evaluator(cfg, _data())(build_method(cfg, N_CLASSES), "cpu").metrics
    assert not {"test/agreement", "test/teacher_top1"} & set(m)


def test_card_top1_is_logged_and_a_mismatch_is_flagged(tmp_path):
    ckpt = _teacher_ckpt(tmp_path)
    write_card(ckpt, arch="conv2", dataset="cifar100", num_classes=N_CLASSES, top1=61.0)
    cfg, method = _kd(ckpt)
    m = Top1Evaluator(cfg, _data())(method, "cpu").metrics
    assert m["test/teacher_card_top1"] == 61.0
    assert teacher_cell({"teacher_top1": 48.9, "teacher_card_top1": 61.0, "agreement": 73.12}) \
        == "teacher 48.9% (card 61.0%!), agree 73.1%"
    assert teacher_cell({"teacher_top1": 60.5, "teacher_card_top1": 61.0}) == \
        "teacher 60.5% (card 61.0%)"
    assert teacher_cell({"test/top1": 50.0}) == ""


def _worker(rank: int, init: str, out: str, ckpt: str, state: dict) -> None:
    with gloo_group(rank, init):
        cfg, method = _kd(ckpt)
        method.load_state_dict(state)
        torch.save(Top1Evaluator(cfg, _data())(method, "cpu").metrics, f"{out}/rank{rank}.pt")


def test_teacher_metrics_over_two_ranks_equal_the_single_process(tmp_path):
    ckpt = _teacher_ckpt(tmp_path)
    cfg, method = _kd(ckpt)
    _spread(method.student, 0)
    single = Top1Evaluator(cfg, _data())(method, "cpu").metrics
    state = {k: v.clone() for k, v in method.state_dict().items()}
    mp.spawn(_worker, args=(f"file://{tmp_path}/init", str(tmp_path), ckpt, state), nprocs=2,
             join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for k in ("test/top1", "test/agreement", "test/teacher_top1", "test/n_images"):
            assert got[k] == single[k], k


@pytest.mark.parametrize("name", ["kd", "dkd", "sskd", "cskd", "ce", "smkd"])
def test_teacher_logits_hook_of_every_teacher_kind(name, tmp_path):
    """Frozen classifier teachers give (B, num_classes) logits (CSKD: its CNN's pooled output);
    methods without one (CE, the EMA self-distillation of SMKD) give None."""
    from test_methods import NUM_CLASSES, tiny_batch, tiny_config

    cfg = tiny_config(name, tmp_path)
    method = build_method(cfg, NUM_CLASSES).eval()
    x = tiny_batch(cfg).views[0]
    t = method.teacher_logits(x)
    if name in ("ce", "smkd"):
        assert t is None
    else:
        assert t.shape == (len(x), NUM_CLASSES) and torch.isfinite(t).all()


# ---------------------------------------------------------------------------- prediction cache
def _no_teacher(method, monkeypatch) -> None:
    monkeypatch.setattr(method, "teacher_logits", lambda x: pytest.fail("teacher run"))


def test_a_new_trial_with_the_same_teacher_reads_its_predictions_from_disk(tmp_path, monkeypatch):
    ckpt = _teacher_ckpt(tmp_path)
    cfg, first_method = _kd(ckpt)
    _spread(first_method.student, 0)
    first = Top1Evaluator(cfg, _data())(first_method, "cpu").metrics
    files = list((tmp_path / "cache" / "teacher_preds").glob("*/*.npy"))
    assert len(files) == -(-N_IMAGES // cfg.eval.batch_size)  # one file per batch
    # another trial: a new method (same checkpoint, other student), a new evaluator
    cfg, method = _kd(ckpt)
    _spread(method.student, 3)
    agree, t_top1 = _by_hand(method, _data())
    _no_teacher(method, monkeypatch)
    m = Top1Evaluator(cfg, _data())(method, "cpu").metrics
    assert m["test/teacher_top1"] == pytest.approx(t_top1, abs=1e-9) == first["test/teacher_top1"]
    assert m["test/agreement"] == pytest.approx(agree, abs=1e-9)
    assert m["test/agreement"] != first["test/agreement"]


def test_other_weights_or_other_images_miss_the_cache(tmp_path, monkeypatch):
    cfg, method = _kd(_teacher_ckpt(tmp_path, seed=1))
    Top1Evaluator(cfg, _data())(method, "cpu")
    # other teacher weights: its own predictions, computed
    cfg2, other = _kd(_teacher_ckpt(tmp_path, seed=2))
    assert _teacher_runs(other, monkeypatch, cfg2, _data()) == N_IMAGES
    # the same teacher on other images (e.g. another transform): computed, not looked up
    shifted = TensorDataset(_data().tensors[0] + 0.5, _data().tensors[1])
    assert _teacher_runs(method, monkeypatch, cfg, shifted) == N_IMAGES


def _teacher_runs(method, monkeypatch, cfg, data) -> int:
    """Images the teacher ran on in one evaluation; checks its metrics by hand."""
    calls: list[int] = []
    real = method.teacher_logits
    with monkeypatch.context() as mp:
        mp.setattr(method, "teacher_logits", lambda x: calls.append(len(x)) or real(x))
        m = Top1Evaluator(cfg, data)(method, "cpu").metrics
    assert m["test/teacher_top1"] == pytest.approx(_by_hand(method, data)[1], abs=1e-9)
    return sum(calls)


def test_the_teacher_key_sees_settings_outside_the_weights():
    """Two teachers with the same state_dict but another layer setting (BatchNorm eps) compute
    other logits: their keys differ; the same module twice gives one key."""
    a = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, eps=1e-5))
    b = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, eps=1e-1))
    b.load_state_dict(a.state_dict())
    host = torch.nn.Module()
    assert teacher_key(host, a, "cpu") == teacher_key(host, a, "cpu")
    assert teacher_key(host, a, "cpu") != teacher_key(host, b, "cpu")


def test_a_cache_folder_owned_by_someone_else_is_not_used(tmp_path, monkeypatch):
    ckpt = _teacher_ckpt(tmp_path)
    cfg, method = _kd(ckpt)
    want = Top1Evaluator(cfg, _data())(method, "cpu").metrics        # fills the cache
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    cfg, method = _kd(ckpt)
    assert _teacher_runs(method, monkeypatch, cfg, _data()) == N_IMAGES
    cfg, method = _kd(ckpt)
    assert Top1Evaluator(cfg, _data())(method, "cpu").metrics == want


def test_a_damaged_cache_file_is_recomputed_and_a_read_only_cache_still_evaluates(tmp_path,
                                                                                  monkeypatch):
    ckpt = _teacher_ckpt(tmp_path)
    cfg, method = _kd(ckpt)
    want = Top1Evaluator(cfg, _data())(method, "cpu").metrics
    files = sorted((tmp_path / "cache" / "teacher_preds").glob("*/*.npy"))
    files[0].write_bytes(b"not a tensor")
    np.save(files[1], np.zeros(3))                # an array, but not predictions
    np.save(files[2], np.zeros(1, dtype=np.int64))  # predictions of the wrong length
    torch.save(torch.zeros(16, dtype=torch.int64), files[3])  # another format (a zip)
    cfg, method = _kd(ckpt)
    assert Top1Evaluator(cfg, _data())(method, "cpu").metrics == want
    # nowhere to write: predictions stay in memory, the numbers are the same
    monkeypatch.setenv("KDRAY_CACHE_DIR", str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        cfg, method = _kd(ckpt)
        if os.access(tmp_path / "ro", os.W_OK):  # root ignores modes: block the folder instead
            (tmp_path / "ro" / "teacher_preds").write_text("a file, not a folder")
        assert Top1Evaluator(cfg, _data())(method, "cpu").metrics == want
        assert not list((tmp_path / "ro").glob("**/*.npy"))
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_a_moving_teacher_is_never_cached(tmp_path, monkeypatch):
    cfg, method = _kd(_teacher_ckpt(tmp_path))
    monkeypatch.setattr(type(method), "teacher_update", "ema")
    ev = Top1Evaluator(cfg, _data())
    ev(method, "cpu")
    assert not (tmp_path / "cache" / "teacher_preds").exists()
    with torch.no_grad():
        method.teacher.head.bias.add_(torch.linspace(-3, 3, N_CLASSES))  # the teacher moved
    m = ev(method, "cpu").metrics
    assert m["test/teacher_top1"] == pytest.approx(_by_hand(method, _data())[1], abs=1e-9)
