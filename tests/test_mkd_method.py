"""MKD end to end: COCO-format detection data, the MKD method on torchvision detectors, the COCO
evaluator behind eval.kind=coco, a run_local smoke run and the study presets."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from kdray.config import ConfigError, ExperimentConfig
from kdray.data import DataNotFoundError, build_dataset, build_eval_dataset, build_train_loader
from kdray.data.coco import CocoDetection, resized_hw
from kdray.engine.loop import seed_all
from kdray.engine.preflight import method_preflight
from kdray.eval import build_evaluator
from kdray.methods import build_method
from kdray.types import Batch, Step

torch.set_num_threads(1)
REPO = Path(__file__).parents[1]
DATA = REPO.parent / "shared" / "data"
SMALL = {"method": "mkd", "model.arch": "resnet18", "data.image_size": 128,
         "data.dataset": "coco128", "data.root": str(DATA), "data.batch_size": 2,
         "eval.kind": "coco", "eval.split": "test", "eval.batch_size": 3,
         "method_cfg.fpn_channels": 16, "method_cfg.teacher_fpn_channels": 16,
         "method_cfg.decoder_dim": 16, "method_cfg.decoder_heads": 2,
         "method_cfg.decoder_depth": 1, "method_cfg.w_global": 1e-4}
ALONE = {"method_cfg.w_feat": 0.0, "method_cfg.w_global": 0.0, "method_cfg.mask_ratio": 0.0}


def _coco128() -> Path:
    path = DATA / "coco128" / "annotations" / "instances_train2017.json"
    assert path.is_file(), f"shared data missing: {path}"
    return path


def _teacher(tmp_path: Path, arch: str = "resnet18", **over) -> str:
    cfg = ExperimentConfig().override({**SMALL, **ALONE, "model.arch": arch, **over})
    path = tmp_path / f"teacher_{arch}_{len(over)}.pt"
    torch.save({"model": build_method(cfg, 80).checkpoint_state()}, path)
    return str(path)


def _cfg(tmp_path: Path, **over) -> ExperimentConfig:
    return ExperimentConfig().override({**SMALL, "model.teacher_ckpt": _teacher(tmp_path), **over})


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 128.0, 64.0]]),
                "labels": torch.tensor([3, 17])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return Batch(views=[torch.rand(2, 3, 128, 128, generator=g)], extra={"targets": targets})


# ------------------------------------------------------------------ method
def test_tiny_retinanet_step_teacher_frozen(tmp_path: Path) -> None:
    _coco128()
    seed_all(0)
    m = build_method(_cfg(tmp_path), 80).train()
    assert not m.teacher.training and not any(p.requires_grad for p in m.teacher.parameters())
    out = m(_batch(), Step(0, 0, 10))
    assert set(out) == {"loss", "task", "feat", "global"}
    assert all(torch.isfinite(v) for v in out.values())
    want = out["task"] + out["feat"] + 1e-4 * out["global"]
    torch.testing.assert_close(out["loss"].detach(), want, rtol=1e-5, atol=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    missing = [n for n, p in m.student.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    m.eval()
    dets = m.detect(_batch().views[0])
    assert len(dets) == 2 and all(d["boxes"].shape[1:] == (4,) for d in dets)
    assert "teacher" not in m.checkpoint_state()


def test_terms_present_per_weight(tmp_path: Path) -> None:
    _coco128()
    alone = build_method(_cfg(tmp_path, **ALONE), 80)
    assert alone.teacher is None and alone.student.decoder is None
    assert alone.student.global_loss is None and alone.student.hooks is None
    assert set(alone(_batch(), Step(0, 0, 1))) == {"loss", "task"}
    fgd = build_method(_cfg(tmp_path, **{"method_cfg.w_global": 0.0,
                                         "method_cfg.mask_ratio": 0.0,
                                         "method_cfg.decoder_depth": 0}), 80)
    assert isinstance(fgd.student.decoder, torch.nn.ModuleList) and fgd.student.hooks is None
    assert set(fgd(_batch(), Step(0, 0, 1))) == {"loss", "task", "feat"}
    glob = build_method(_cfg(tmp_path, **{"method_cfg.w_feat": 0.0}), 80)
    assert set(glob(_batch(), Step(0, 0, 1))) == {"loss", "task", "global"}


def test_task_loss_on_unmasked_or_masked_forward(tmp_path: Path) -> None:
    _coco128()
    seed_all(0)
    full = build_method(_cfg(tmp_path), 80).train()
    alone = build_method(_cfg(tmp_path, **ALONE), 80).train()
    alone.student.detector.load_state_dict(full.student.detector.state_dict())
    masked = build_method(_cfg(tmp_path, **{"method_cfg.task_on": "masked"}), 80).train()
    masked.student.load_state_dict(full.student.state_dict())
    # BN statistics move in train mode: compare each from the same starting state
    state = {k: v.clone() for k, v in full.student.detector.state_dict().items()}
    t_full = full(_batch(), Step(0, 0, 1))["task"]
    alone.student.detector.load_state_dict(state)
    t_alone = alone(_batch(), Step(0, 0, 1))["task"]
    masked.student.detector.load_state_dict(state)
    seen = []  # the head's input: P3 of the forward the task loss is computed on
    masked.student.detector.head.register_forward_pre_hook(lambda mod, a: seen.append(a[0][0]))
    alone.student.detector.head.register_forward_pre_hook(lambda mod, a: seen.append(a[0][0]))
    t_masked = masked(_batch(), Step(0, 0, 1))["task"]
    alone.student.detector.load_state_dict(state)
    alone(_batch(), Step(0, 0, 1))
    torch.testing.assert_close(t_full, t_alone)  # the extra clean forward is the plain detector
    # a random-init head barely depends on its input, so compare what it was given
    assert torch.isfinite(t_masked) and not torch.allclose(seen[0], seen[1])


def test_faster_rcnn_student(tmp_path: Path) -> None:
    _coco128()
    over = {"method_cfg.detector": "faster_rcnn"}
    m = build_method(_cfg(tmp_path, **over, **{"model.teacher_ckpt": _teacher(
        tmp_path, **over)}), 80).train()
    assert len(m.student.decoder.levels) == 4  # P2-P5
    out = m(_batch(), Step(0, 0, 1))
    out["loss"].backward()
    assert set(out) == {"loss", "task", "feat", "global"} and torch.isfinite(out["loss"])


def test_preflight_rejects_bad_teacher_and_data(tmp_path: Path) -> None:
    _coco128()
    method_preflight(_cfg(tmp_path))
    wrong = _cfg(tmp_path, **{"model.teacher_arch": "resnet34"})  # the ckpt is an R18
    with pytest.raises(ConfigError, match="does not fit"):
        method_preflight(wrong)
    with pytest.raises(ConfigError, match="does not fit"):
        method_preflight(_cfg(tmp_path, **{"method_cfg.teacher_fpn_channels": 32}))
    with pytest.raises(ConfigError, match="no file"):
        method_preflight(_cfg(tmp_path, **{"model.teacher_ckpt": str(tmp_path / "none.pt")}))
    with pytest.raises(ConfigError, match="teacher_ckpt"):
        method_preflight(_cfg(tmp_path, **{"model.teacher_ckpt": ""}))
    with pytest.raises(ConfigError, match="detection dataset"):
        method_preflight(_cfg(tmp_path, **{"data.dataset": "synthetic_fs", "eval.kind": "none"}))
    # a torchvision RetinaNet state_dict (FrozenBatchNorm-style: no num_batches_tracked) fits
    from torchvision.models.detection import retinanet_resnet50_fpn

    from kdray.methods.mkd.method import build_teacher

    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80)
    torch.save({k: v for k, v in tv.state_dict().items() if "num_batches" not in k},
               tmp_path / "tv.pt")
    tv_cfg = _cfg(tmp_path, **{"model.teacher_arch": "resnet50",
                               "model.teacher_ckpt": str(tmp_path / "tv.pt"),
                               "method_cfg.teacher_fpn_channels": 256})
    assert torch.equal(build_teacher(tv_cfg, 80).head.classification_head.cls_logits.weight,
                       tv.head.classification_head.cls_logits.weight)
    with pytest.raises(ConfigError, match="masked_only"):
        _cfg(tmp_path, **{"method_cfg.masked_only": True, "method_cfg.mask_ratio": 0.0})


# ------------------------------------------------------------------ data
def test_coco128_boxes_scaled_and_flipped(tmp_path: Path) -> None:
    gt = json.loads(_coco128().read_text())
    cfg = ExperimentConfig().override(SMALL)
    ds = build_dataset(cfg.data, "test")
    assert isinstance(ds, CocoDetection) and len(ds) == 128
    i = next(k for k, im in enumerate(ds.infos) if im["id"] == 9)  # 640 x 480
    x, t = ds[i]
    assert x.shape == (3, 128, 171) and 0.0 <= x.min() and x.max() <= 1.0
    s = 128 / 480
    anns = [a for a in gt["annotations"] if a["image_id"] == 9 and not a["iscrowd"]]
    want = torch.tensor([[a["bbox"][0] * s, a["bbox"][1] * s, (a["bbox"][0] + a["bbox"][2]) * s,
                          (a["bbox"][1] + a["bbox"][3]) * s] for a in anns])
    torch.testing.assert_close(t["boxes"], want.float())
    cats = sorted(c["id"] for c in gt["categories"])
    assert [cats[k] for k in t["labels"].tolist()] == [a["category_id"] for a in anns]
    assert resized_hw(100, 1000, 128) == (21, 213, 213 / 1000)  # long side capped at 128*1333/800
    train = build_dataset(cfg.data, "train")
    flips = {train[(i, seed)][1]["boxes"][0, 0].item() for seed in range(8)}
    assert sorted(flips) == pytest.approx(sorted([want[0, 0].item(), 171 - want[0, 2].item()]))
    for j in range(0, 128, 16):
        _, tj = ds[j]
        b, (h, w) = tj["boxes"], ds[j][0].shape[-2:]
        assert (b[:, 2:] > b[:, :2]).all() and (b >= -1e-4).all()
        assert (b[:, [0, 2]] <= w + 1e-3).all() and (b[:, [1, 3]] <= h + 1e-3).all()


def test_train_loader_batches_and_missing_data(tmp_path: Path) -> None:
    _coco128()
    cfg = ExperimentConfig().override(SMALL)
    batch = next(iter(build_train_loader(cfg, rank=0, world=1)))
    x = batch.views[0]
    assert x.shape[0] == 2 and x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
    assert len(batch.extra["targets"]) == 2 and len(batch.extra["image_ids"]) == 2
    for (h, w), img in zip(batch.extra["sizes"], x):
        assert min(h, w) == 128 and (img[:, h:] == 0).all() and (img[:, :, w:] == 0).all()
    missing = cfg.override({"data.root": str(tmp_path)})
    with pytest.raises(DataNotFoundError, match="github.com/developer0hye/COCO128") as e:
        build_train_loader(missing, rank=0, world=1)
    assert str(tmp_path / "coco128" / "train2017") in str(e.value)


# ------------------------------------------------------------------ evaluation
class _Oracle(torch.nn.Module):
    """detect() returns the ground truth (resized pixels) of the images in evaluation order."""

    def __init__(self, ds: CocoDetection, order: list[int]) -> None:
        super().__init__()
        self.queue = [ds[i][1] for i in order]

    def detect(self, images: torch.Tensor, sizes) -> list[dict]:
        out, self.queue = self.queue[: len(images)], self.queue[len(images):]
        return [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])),
                 "labels": t["labels"]} for t in out]


def test_coco_evaluator_ground_truth_gives_ap_one() -> None:
    _coco128()
    cfg = ExperimentConfig().override({**SMALL, "eval.max_items": 10})
    ev = build_evaluator(cfg, build_eval_dataset(cfg))
    res = ev(_Oracle(ev.dataset, ev.indices), "cpu")
    assert set(res.metrics) == {f"test/{k}" for k in ("AP", "AP50", "AP75", "AP_S", "AP_M",
                                                     "AP_L")}
    for k in ("test/AP", "test/AP50", "test/AP75"):
        assert res.metrics[k] == pytest.approx(1.0, abs=1e-9)
    assert all(v in (-1.0,) or v == pytest.approx(1.0) for v in res.metrics.values())
    worse = _Oracle(ev.dataset, ev.indices)
    worse.queue[0] = {"boxes": worse.queue[0]["boxes"] + 40.0, "labels": worse.queue[0]["labels"]}
    assert ev(worse, "cpu").metrics["test/AP"] < 1.0
    test_cfg = cfg.override({"eval.split": "train"})  # the prefix is the evaluated split's name
    res = build_evaluator(test_cfg, build_eval_dataset(test_cfg))(
        _Oracle(ev.dataset, ev.indices), "cpu")
    assert set(res.metrics) == {f"train/{k}" for k in ("AP", "AP50", "AP75", "AP_S", "AP_M",
                                                       "AP_L")}


@pytest.mark.slow
def test_run_local_smoke_with_coco_eval(tmp_path: Path) -> None:
    from kdray.engine.runner import run_local

    _coco128()
    cfg = _cfg(tmp_path, **{"train.epochs": 1, "train.steps_per_epoch": 2,
                            "eval.max_items": 4, "optim.lr": 1e-4})
    res = run_local(cfg, str(tmp_path / "run"))
    assert all(math.isfinite(res.metrics[k]) for k in ("train/loss", "train/feat", "test/AP"))
    assert 0.0 <= res.metrics["test/AP"] <= 1.0 and (tmp_path / "run" / "checkpoint.pt").exists()


def test_study_presets_validate() -> None:
    spec = importlib.util.spec_from_file_location("mkd_ablation",
                                                  REPO / "studies" / "mkd_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for preset in ("smoke", "coco", "coco_r18"):
        study = mod.build(preset)
        assert len(study.validate()) == 9  # 5 rows + search and report bases at two corners
        teacher = study.base.override(mod.P.TEACHER[preset])
        assert not teacher.method_cfg.uses_teacher
    assert [r.paper for r in mod.build("coco").rows][0] == "37.4"
