"""SSKD: the CIFAR zoo (shapes, parameter counts), each loss against hand computations, selective
transfer (ties included), a frozen teacher, the teacher registry, the T2 SS head learning, the
presets, and a small CIFAR-10 run where the SSKD student beats the same student trained with CE."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import load_study

from kdray.config import ConfigError, ExperimentConfig
from kdray.engine.loop import seed_all
from kdray.engine.preflight import method_preflight
from kdray.methods import build_method
from kdray.methods.sskd import losses as L
from kdray.methods.sskd.method import ss_head
from kdray.modules.backbones import Classifier, build_backbone
from kdray.modules.teachers import build_classifier as build_cls
from kdray.modules.teachers import read_card, write_card
from kdray.types import Batch, Step

REPO = Path(__file__).resolve().parents[1]
C = 4

# Parameters (M) with a 100-class head, CRD/SSKD zoo table (RepDistiller models).
ZOO = {"wrn_40_2": 2.26, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "vgg13": 9.46, "vgg8": 3.96,
       "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36, "resnet50_cifar": 23.71}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_shapes_and_parameter_counts(name):
    net = Classifier(build_backbone(name), 100).eval()
    n = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(n - ZOO[name]) < 0.01 * ZOO[name] + 0.005, (name, n)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 100) and out.feat.shape == (2, net.backbone.num_features)


# ---------------------------------------------------------------------------- losses
def test_similarity_and_teacher_contrastive_loss_by_hand():
    z_nor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])                 # B = 2
    z_tf = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])  # K = 2, view-major
    sim = L.similarity(z_tf, z_nor)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.0], [r, r], [0.0, -1.0], [-1.0, 0.0]]))
    # rows 0, 2 come from image 0; rows 1, 3 from image 1 (r % B)
    ce = [-(s[t] - math.log(math.exp(s[0]) + math.exp(s[1])))
          for s, t in zip(sim.tolist(), [0, 1, 0, 1])]
    loss, acc = L.contrastive_loss(sim, tau=1.0)
    assert loss.item() == pytest.approx(sum(ce) / 4, rel=1e-6)
    assert acc.item() == pytest.approx(3 / 4)  # rows 0, 2, 3 right; row 1 ties, argmax picks 0
    loss_t, _ = L.contrastive_loss(sim, tau=0.5)
    ce_t = [-(2 * s[t] - math.log(math.exp(2 * s[0]) + math.exp(2 * s[1])))
            for s, t in zip(sim.tolist(), [0, 1, 0, 1])]
    assert loss_t.item() == pytest.approx(sum(ce_t) / 4, rel=1e-6)


# the row-averaged KL of L_T and L_ss: tests/test_losses.py (kl_div, reduction="masked")


def test_ranks_count_strictly_larger_entries():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.5, 0.2], [0.3, 0.2, 0.1], [0.0, 0.1, 0.2]])
    target = torch.tensor([1, 1, 2, 0])
    assert L.target_rank(scores, target).tolist() == [0, 0, 2, 2]  # a tie counts as correct


@pytest.mark.parametrize("rank, ratio, kept", [
    ([0, 2, 1, 0, 1, 3], 0.5, [0, 2, 3, 4]),      # 4 wrong -> 2 kept: the two rank-1 rows
    ([0, 2, 1, 0, 1, 3], 0.75, [0, 1, 2, 3, 4]),  # 3 kept: rank 1, 1, then 2
    ([0, 2, 1, 0, 1, 3], 0.0, [0, 3]),            # correct rows only
    ([0, 2, 1, 0, 1, 3], 1.0, [0, 1, 2, 3, 4, 5]),
    ([0, 1, 1, 1], 0.5, [0, 1]),                  # tie among wrong rows: earlier row first
    ([2, 2, 2, 2], 0.25, [0]),                    # no correct row, floor(0.25 * 4) = 1
    ([1, 1, 1], 0.5, [0]),                        # floor(1.5) = 1
])
def test_selective_transfer_keeps_exactly_the_expected_rows(rank, ratio, kept):
    mask = L.select_rows(torch.tensor(rank), ratio)
    assert torch.nonzero(mask).flatten().tolist() == kept


def test_selective_transfer_keep_count_is_exact_for_every_two_decimal_ratio():
    """The number of rows kept is floor(ratio * #wrong) computed in integers: 101 ratios x
    n = 0..200 wrong rows (plus one correct row), against k * n // 100."""
    for k in range(101):
        ratio = float(f"{k / 100:.2f}")
        for n in range(201):
            rank = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, n + 1)])
            kept = int(L.select_rows(rank, ratio).sum())
            assert kept == 1 + k * n // 100, (ratio, n, kept)


def test_transformed_views():
    x = torch.arange(8.0).view(2, 1, 2, 2).expand(2, 3, 2, 2).contiguous()  # B = 2
    v = L.transformed_views(x, "rotation")
    assert v.shape == (6, 3, 2, 2)
    # image 0 = [[0, 1], [2, 3]]: 90 degrees counter-clockwise -> [[1, 3], [0, 2]]
    assert v[0, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]
    assert v[2, 0].tolist() == [[3.0, 2.0], [1.0, 0.0]]      # 180 degrees, image 0 (row 1*B + 0)
    assert v[5, 0].tolist() == [[6.0, 4.0], [7.0, 5.0]]      # 270 degrees, image 1
    img = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = L.transformed_views(img, "paper", torch.Generator().manual_seed(1))
    b = L.transformed_views(img, "paper", torch.Generator().manual_seed(1))
    assert a.shape == (12, 3, 8, 8) and torch.equal(a, b)
    assert torch.allclose(a[:3, 0], a[:3, 1]) and torch.allclose(a[:3, 1], a[:3, 2])  # no colour


# ---------------------------------------------------------------------------- the method
def _teacher_file(tmp_path, arch: str = "conv2", head: bool = True, size: int = 16,
                  classes: int = C) -> str:
    seed_all(3)
    cls = build_cls(ExperimentConfig().override({"model.arch": arch, "data.image_size": size}),
                    classes)
    model = {"student": cls.state_dict()}
    if head:
        model = {"teacher": cls.state_dict(), "ss_head": ss_head(cls.backbone.num_features)
                 .state_dict()}
    path = tmp_path / f"{arch}_{'t2' if head else 't1'}.pt"
    torch.save({"model": model}, path)
    return str(path)


def _cfg(tmp_path, **over) -> ExperimentConfig:
    base = {"method": "sskd", "model.arch": "conv2", "model.teacher_arch": "conv2",
            "data.image_size": 16, "model.teacher_ckpt": _teacher_file(tmp_path)}
    return ExperimentConfig().override({**base, **over})


def _batch(b: int = 6) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(views=[torch.randn(b, 3, 16, 16, generator=g)], labels=torch.arange(b) % C)


def _rank_by_sorting(row: list[float], target: int) -> int:
    return sorted(range(len(row)), key=lambda j: -row[j]).index(target)  # no ties here


def test_total_loss_is_the_weighted_sum_of_hand_computed_terms(tmp_path):
    cfg = _cfg(tmp_path, **{"method_cfg.ratio_ss": 0.5, "method_cfg.ratio_tf": 0.5})
    seed_all(0)
    method = build_method(cfg, C).train()
    batch, m, b = _batch(), cfg.method_cfg, 6
    out = method(batch, Step(it=0, epoch=0, total_its=1))
    x = torch.cat([batch.views[0], L.transformed_views(batch.views[0], "rotation")])
    with torch.no_grad():
        s, t = method.student(x), method.teacher(x)
    y = batch.labels
    ce = F.cross_entropy(s.logits[:b], y)
    p_t = F.softmax(t.logits[:b] / 4, 1)
    kd = 16 * (p_t * (p_t.log() - F.log_softmax(s.logits[:b] / 4, 1))).sum(1).mean()

    def selected_kl(s_rows, t_rows, targets, ratio, tau):
        ranks = [_rank_by_sorting(r, int(c)) for r, c in zip(t_rows.tolist(), targets)]
        wrong = sorted((r, i) for i, r in enumerate(ranks) if r > 0)
        keep = [i for i, r in enumerate(ranks) if r == 0]
        keep += [i for _, i in wrong[:int(ratio * len(wrong))]]
        pt = F.softmax(t_rows[keep] / tau, 1)
        return tau**2 * (pt * (pt.log() - F.log_softmax(s_rows[keep] / tau, 1))).sum(1).mean()

    tf = selected_kl(s.logits[b:], t.logits[b:], y.repeat(3).tolist(), 0.5, 4.0)
    cos = lambda z: F.normalize(z[b:], dim=1) @ F.normalize(z[:b], dim=1).T  # noqa: E731
    ss = selected_kl(cos(s.proj), cos(t.proj), [i % b for i in range(3 * b)], 0.5, 0.5)
    for k, v in {"ce": ce, "kd": kd, "tf": tf, "ss": ss}.items():
        assert out[k].item() == pytest.approx(v.item(), rel=1e-4, abs=1e-6), k
    total = m.w_ce * ce + m.w_kd * kd + m.w_tf * tf + m.w_ss * ss
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-4)


def test_gradients_never_reach_the_teacher_and_its_bn_stays_in_eval(tmp_path):
    seed_all(0)
    method = build_method(_cfg(tmp_path), C).train()
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    out = method(_batch(), Step(it=0, epoch=0, total_its=1))
    out["loss"].backward()
    assert not method.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in method.teacher.state_dict().items())
    assert all(p.grad is not None for p in method.student.parameters())


def test_rows_without_teacher_terms_build_no_teacher_and_no_ss_head(tmp_path):
    ce_only = {"method_cfg.w_kd": 0.0, "method_cfg.w_ss": 0.0, "method_cfg.w_tf": 0.0}
    method = build_method(_cfg(tmp_path, **ce_only), C)
    assert method.teacher is None and method.student.ss_head is None
    out = method(_batch(), Step(it=0, epoch=0, total_its=1))
    assert set(out) == {"loss", "ce"}
    kd_tf = build_method(_cfg(tmp_path, **{"method_cfg.w_ss": 0.0}), C)
    assert kd_tf.teacher.ss_head is None and kd_tf.student.ss_head is None
    with pytest.raises(ConfigError, match="no SS module"):  # a T1 checkpoint cannot serve L_ss
        build_method(_cfg(tmp_path, **{"model.teacher_ckpt": _teacher_file(tmp_path, head=False)}), C)


# ---------------------------------------------------------------------------- teacher registry
@pytest.fixture(scope="module")
def cifar_env(shared_data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDRAY_DATA_PATH", str(shared_data))
        yield str(shared_data)


def test_teacher_registry_rejects_wrong_or_underperforming_teachers(tmp_path, cifar_env):

    ckpt = _teacher_file(tmp_path, size=32, classes=10)
    cfg = ExperimentConfig().override({
        "method": "sskd", "model.arch": "conv2", "model.teacher_arch": "conv2",
        "model.teacher_ckpt": ckpt, "data.dataset": "cifar10", "data.root": cifar_env,
        "eval.kind": "top1", "method_cfg.teacher_eval_items": 200})
    method_preflight(cfg)  # no card, no expectation: fine
    with pytest.raises(ConfigError, match="does not fit teacher arch 'conv4'"):
        method_preflight(cfg.override({"model.teacher_arch": "conv4"}))
    with pytest.raises(ConfigError, match="no registry card"):
        method_preflight(cfg.override({"method_cfg.require_card": True}))
    # a random 10-class teacher scores about 10%: an expectation of 50% stops the run
    with pytest.raises(ConfigError, match=r"measures \d+\.\d+% top-1 on test \(200 images\)"):
        method_preflight(cfg.override({"method_cfg.teacher_min_acc": 50.0}))
    card = write_card(ckpt, arch="conv2", dataset="cifar10", num_classes=10, top1=61.0,
                      ss_transforms="rotation", registry=str(tmp_path / "teachers.json"))
    assert read_card(ckpt) == card and card.sha256 in (tmp_path / "teachers.json").read_text()
    with pytest.raises(ConfigError, match="card dataset 'cifar10', configured 'cifar100'"):
        from kdray.modules.teachers import check_card
        check_card(card, ckpt, arch="conv2", dataset="cifar100", num_classes=10)
    with pytest.raises(ConfigError, match="recorded top-1 61.00% is below the expected 70.00%"):
        method_preflight(cfg.override({"method_cfg.teacher_min_acc": 70.0}))
    with pytest.raises(ConfigError, match="trained on 'rotation' transforms"):
        method_preflight(cfg.override({"method_cfg.transforms": "paper"}))
    with open(ckpt, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ConfigError, match="checksum"):
        method_preflight(cfg)


# ---------------------------------------------------------------------------- CIFAR-10 runs
def _cifar_tensors(split: str, n: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n evenly spaced images of a CIFAR-10 split, normalised, average-pooled to `size` px."""
    from kdray.data import build_dataset
    from kdray.data.base import CIFAR10_STATS

    # ../shared/data (as the smoke presets): its decoded-array cache spares a 60k JPEG decode
    cfg = ExperimentConfig().override({"data.dataset": "cifar10",
                                       "data.root": str(REPO.parent / "shared" / "data")})
    ds = build_dataset(cfg.data, split)
    idx = np.arange(n) * (len(ds) // n)
    x = torch.from_numpy(ds.images[ds.rows[idx]]).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in CIFAR10_STATS)
    x = F.adaptive_avg_pool2d((x - mean) / std, size)
    return x, torch.tensor([ds.targets[i] for i in idx])


def _fit(method, x, y, *, steps: int, batch: int, lr: float, seed: int) -> list[dict]:
    """Plain SGD loop over random batches (flip augmentation); returns the logged dicts."""
    g = torch.Generator().manual_seed(seed)
    params = [p for grp in method.param_groups(5e-4) for p in grp["params"]]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    logs = []
    method.train()
    for it in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = torch.where(torch.rand(batch, 1, 1, 1, generator=g) < 0.5, x[idx], x[idx].flip(3))
        out = method(Batch(views=[xb], labels=y[idx]), Step(it=it, epoch=0, total_its=steps))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        logs.append({k: float(v.detach()) for k, v in out.items()})
    return logs


@torch.no_grad()
def _top1(method, x, y) -> float:
    method.eval()
    return 100.0 * float((method.logits(x).argmax(1) == y).float().mean())


def _t2(tmp_path, t1_state, arch: str, x, y, steps: int, lr: float = 0.1, tau: float = 1.0):
    """Stage T2 (method sskd_teacher) on a T1 state dict; returns (method, logged dicts)."""
    path = tmp_path / "t1.pt"
    torch.save({"model": {"student": t1_state}}, path)
    cfg = ExperimentConfig().override({"method": "sskd_teacher", "model.teacher_arch": arch,
                                       "data.image_size": 16, "model.teacher_ckpt": str(path),
                                       "method_cfg.tau": tau})
    seed_all(0)
    t2 = build_method(cfg, 10)
    return t2, _fit(t2, x, y, steps=steps, batch=32, lr=lr, seed=1)


@torch.no_grad()
def _ss_eval(t2, x) -> tuple[float, float]:
    """(contrastive accuracy %, loss) of a T2 method on held-out images (3 rotations x B rows)."""
    t2.eval()
    out = t2(Batch(views=[x], labels=None), Step(it=0, epoch=0, total_its=1))
    return float(out["ss_acc"]), float(out["ss"])


@pytest.mark.slow
def test_t2_ss_head_learns_on_a_frozen_teacher(tmp_path, cifar_env):
    x, y = _cifar_tensors("train", 640)
    seed_all(0)
    t1 = Classifier(build_backbone("conv2"), 10)  # random frozen features suffice for the task
    frozen = {k: v.clone() for k, v in t1.state_dict().items()}
    held = x[512:]
    seed_all(0)
    acc0, loss0 = _ss_eval(build_method(ExperimentConfig().override({
        "method": "sskd_teacher", "model.teacher_arch": "conv2", "data.image_size": 16,
        "model.teacher_ckpt": _t1_file(tmp_path, t1)}), 10), held)
    t2, _ = _t2(tmp_path, t1.state_dict(), "conv2", x[:512], y[:512], steps=60)  # tau = 1
    acc1, loss1 = _ss_eval(t2, held)
    print(f"T2 held-out contrastive accuracy {acc0:.1f}% -> {acc1:.1f}%, loss {loss0:.2f} -> "
          f"{loss1:.2f}")
    # observed: 33.1% -> 40.4%, loss 4.82 -> 4.24 (chance: 1/128 of the held-out rows)
    assert acc1 > acc0 + 4.0 and loss1 < loss0 - 0.3, (acc0, acc1, loss0, loss1)
    assert all(torch.equal(frozen[k], v) for k, v in t2.teacher.state_dict().items())
    assert set(t2.checkpoint_state()) == {"teacher", "ss_head"}


def _t1_file(tmp_path, t1) -> str:
    path = tmp_path / "t1_init.pt"
    torch.save({"model": {"student": t1.state_dict()}}, path)
    return str(path)


@pytest.mark.slow
def test_cifar10_sskd_student_beats_ce_student(tmp_path, cifar_env):
    """T1 conv4 teacher on 5,000 CIFAR-10 images (16 px), T2 SS head, then a conv2 student on
    1,000 of those images, 400 steps of 32: full SSKD (official defaults) against CE alone.
    Observed (seed 0): teacher 48.9%, CE 33.7%, KD 39.9%, SSKD 37.2% top-1 on 1,000 test images,
    i.e. SSKD beats CE by 3.5 points (KD alone is ahead of SSKD at this tiny scale)."""
    x, y = _cifar_tensors("train", 5000)
    xt, yt = _cifar_tensors("test", 1000)
    seed_all(0)
    t1 = build_method(ExperimentConfig().override({"model.arch": "conv4", "data.image_size": 16}),
                      10)
    _fit(t1, x, y, steps=500, batch=64, lr=0.05, seed=0)
    teacher_acc = _top1(t1, xt, yt)
    t2, t2_logs = _t2(tmp_path, t1.student.state_dict(), "conv4", x, y, steps=100)
    path = tmp_path / "t2.pt"
    torch.save({"model": t2.checkpoint_state()}, path)
    accs = {}
    for label, over in (("ce", {"method_cfg.w_ce": 1.0, "method_cfg.w_kd": 0.0,
                                "method_cfg.w_ss": 0.0, "method_cfg.w_tf": 0.0}), ("sskd", {})):
        cfg = ExperimentConfig().override({
            "method": "sskd", "model.arch": "conv2", "model.teacher_arch": "conv4",
            "data.image_size": 16, "model.teacher_ckpt": str(path), **over})
        seed_all(0)
        student = build_method(cfg, 10)
        _fit(student, x[::5], y[::5], steps=400, batch=32, lr=0.05, seed=2)
        accs[label] = _top1(student, xt, yt)
    print(f"teacher {teacher_acc:.1f}%, T2 ss_acc {t2_logs[0]['ss_acc']:.1f} -> "
          f"{t2_logs[-1]['ss_acc']:.1f}, students {accs}")
    assert teacher_acc > accs["ce"], (teacher_acc, accs)
    assert accs["sskd"] > accs["ce"] + 1.0, accs


# ---------------------------------------------------------------------------- presets and study
def test_presets_validate_and_pair_specific_recipe(tmp_path):
    mod = load_study("sskd_ablation")
    for preset in ("smoke", "cifar100"):
        study = mod.build(preset)
        cfgs = study.validate()
        # rows + the two corners of the space on the search (val) and the report (test) base
        assert len(cfgs) == len(study.rows) + 4 and all(c.method == "sskd" for c in cfgs)
        assert study.rows[-1].label.startswith("SSKD full")
    c100 = mod.build("cifar100")
    assert c100.row("SSKD full (ratio_ss=0.75)").paper == "76.04"
    assert c100.base.optim.milestones == (150.0, 180.0, 210.0) and c100.base.train.epochs == 240
    ckpt = _teacher_file(tmp_path, size=32)  # a given teacher: no stage runs
    c100 = c100.__class__(**{**c100.__dict__, "base": c100.base.override({
        "model.arch": "shufflenetv1", "model.teacher_arch": "resnet32x4",
        "model.teacher_ckpt": ckpt})})
    args = argparse.Namespace(preset="cifar100", storage_path=None, tracking_uri=None,
                              address=None, results_dir=str(tmp_path))
    out = mod.with_teacher(c100, args)
    assert out.base.optim.lr == 0.01  # MobileNet/ShuffleNet students train at 0.01
    assert out.row("SSKD full (ratio_ss=0.75)").paper == "78.44"
    assert out.row("CE only").paper == "70.77" and out.row("KD").paper == "74.07"


def test_smoke_study_trains_t1_t2_registers_the_teacher_and_runs_rows(tmp_path, cifar_env,
                                                                      monkeypatch):
    """The study's `before` hook with stages run in-process at a tiny size (no Ray): T1 (ce) and
    T2 (sskd_teacher) checkpoints, a teacher card, then the CE-only and full SSKD rows."""
    from kdray.engine.runner import run_local, train
    from kdray.runtime import driver
    from kdray.runtime.driver import StageResult

    mod = load_study("sskd_ablation")
    tiny = {"train.epochs": 1, "train.steps_per_epoch": 2, "data.batch_size": 16,
            "eval.max_items": 100, "data.root": cifar_env}

    def fake_stage(study, args, cfg, suffix):  # study_stage without Ray/MLflow: run_local
        name = f"{study.name}-{suffix}"
        res = run_local(cfg.override(tiny), str(tmp_path / name))
        return StageResult(str(tmp_path / name / "checkpoint.pt"), res.metrics, None, False)

    monkeypatch.setattr(driver, "study_stage", fake_stage)
    args = argparse.Namespace(preset="smoke", storage_path=None, tracking_uri=None, address=None,
                              results_dir=str(tmp_path / "results"))
    study = mod.with_teacher(mod.build("smoke"), args)
    ckpt = study.base.model.teacher_ckpt
    card = read_card(ckpt)
    assert card.arch == "conv4" and card.dataset == "cifar10" and card.ss_transforms == "rotation"
    assert 0.0 <= card.top1 <= 100.0 and card.sha256 in (tmp_path / "results" /
                                                         "teachers.json").read_text()
    m = study.base.method_cfg  # the rows re-measure the registered teacher in preflight
    assert m.require_card and m.teacher_min_acc == max(0.0, round(card.top1 - 5.0, 2))
    for label in ("CE only", "SSKD full (ratio_ss=0.75)"):
        cfg = study.base.override({**study.row(label).overrides, **tiny,
                                   "method_cfg.require_card": True})
        method_preflight(cfg)
        res = train(cfg)
        assert math.isfinite(res.metrics["train/loss"]) and 0 <= res.metrics["test/top1"] <= 100
        assert ("train/ss" in res.metrics) == (label != "CE only")


def test_torchvision_resnet_weights_serve_as_a_t1_teacher(tmp_path):
    """The ImageNet pair: torchvision resnet34 state_dict (fc = head) -> timm resnet34 teacher."""
    from torchvision.models import resnet34

    torch.manual_seed(0)
    net = resnet34(num_classes=C).eval()
    path = tmp_path / "resnet34.pth"
    torch.save(net.state_dict(), path)
    cfg = ExperimentConfig().override({"method": "sskd_teacher", "model.teacher_arch": "resnet34",
                                       "data.image_size": 32, "model.teacher_ckpt": str(path)})
    t2 = build_method(cfg, C)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t2.logits(x), net(x), rtol=1e-4, atol=1e-4)
    study = load_study("sskd_ablation").build("imagenet")
    assert study.row("SSKD full (ratio_ss=0.75)").paper == "71.62"


def test_smoke_preset_falls_back_to_generated_data(tmp_path, shared_data):
    """Without ../shared/data the smoke preset classifies generated images (100 classes, the
    same classes in train and test) instead of failing."""
    from kdray.data import build_dataset, num_train_classes
    from kdray.presets.sskd import SMOKE, smoke_data

    assert smoke_data(shared_data)["data.dataset"] == "cifar10"
    over = {**SMOKE, **smoke_data(tmp_path / "absent"), "data.root": str(tmp_path)}
    cfg = ExperimentConfig().override(over)
    train, test = (build_dataset(cfg.data, s) for s in ("train", "test"))
    assert num_train_classes(cfg) == 100
    assert set(train.targets) == set(test.targets) == set(range(100))
    assert (len(train), len(test)) == (3000, 600)
