"""Split discipline where a dataset's own val is the reported split or is missing: ImageNet and
COCO report on `test` (ILSVRC val, val2017; coco128's own images) and search on a `val` carved from
train; the stages a searched study starts from leave that carved val out too. Index-level checks on
generated folders and json files (no images are decoded, nothing is trained)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import load_study

from kdray.config import DataConfig, ExperimentConfig
from kdray.data.base import HOLDOUT_FRACTION, holdout_ids
from kdray.data.registry import CARVED_VAL, build_dataset, check_data
from kdray.study.describe import paragraph


# ------------------------------------------------------------------ ImageNet
@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> str:
    """imagenet/train/<wnid>/ with 3 (empty) files per class, imagenet/val/<wnid>/ with 1."""
    root = tmp_path_factory.mktemp("in1k")
    for split, n in (("train", 3), ("val", 1)):
        for c in range(1000):
            d = root / "imagenet" / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for k in range(n):
                (d / f"{split}_{c}_{k}.JPEG").touch()
    return str(root)


def _files(ds) -> set[str]:
    if hasattr(ds, "parent"):
        return {ds.parent.files[int(r)] for r in ds.rows}
    return set(ds.files)


def test_imagenet_reports_on_ilsvrc_val_as_test_and_searches_on_a_carved_val(imagenet_root):
    held, plain = DataConfig(dataset="imagenet", root=imagenet_root, holdout_val=True), \
        DataConfig(dataset="imagenet", root=imagenet_root)
    test, val = build_dataset(held, "test"), build_dataset(held, "val")
    train, full = build_dataset(held, "train"), build_dataset(plain, "train")
    assert all(f.startswith("n") and "/val_" in f for f in _files(test)) and len(test) == 1000
    assert len(val) == 1000 and np.bincount(val.targets).tolist() == [1] * 1000  # 1 per class
    assert not _files(val) & _files(train) and _files(val) | _files(train) == _files(full)
    assert len(full) == 3000 and not _files(test) & _files(full)
    assert _files(build_dataset(plain, "val")) == _files(val)
    assert "imagenet" in CARVED_VAL


@pytest.mark.parametrize(("study", "preset"), [("cskd_ablation", "imagenet"),
                                               ("sskd_ablation", "imagenet")])
def test_imagenet_studies_report_on_test_and_search_on_carved_val(study, preset, imagenet_root):
    s = load_study(study).build(preset)
    rb, sb = s.report_base(), s.search_base()
    assert (rb.eval.split, rb.data.holdout_val) == ("test", False)
    assert (sb.eval.split, sb.data.holdout_val) == ("val", True)
    assert s.key() == "test/top1" and s.select_key == "val/top1"
    text = paragraph(s)  # the table's first paragraph: split and search from the plan
    assert "carved from train" in text and "selected on val only" in text
    for cfg in (rb, sb):  # the files are found for both splits (val needs only train)
        check_data(cfg.override({"data.root": imagenet_root}))


# ------------------------------------------------------------------ COCO / coco128
def _coco_json(path: Path, ids: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 48, "width": 64} for i in ids]
    random.Random(len(ids)).shuffle(images)  # order in the json must not matter
    anns = [{"id": k, "image_id": i, "category_id": 1 + i % 3, "bbox": [1, 2, 10, 12],
             "area": 120, "iscrowd": 0} for k, i in enumerate(ids)]
    cats = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("coco")
    train_ids = sorted(random.Random(0).sample(range(1, 10**6), 120))
    for name in ("coco128", "coco"):
        (root / name / "train2017").mkdir(parents=True)
        _coco_json(root / name / "annotations" / "instances_train2017.json", train_ids)
    (root / "coco" / "val2017").mkdir(parents=True)
    _coco_json(root / "coco" / "annotations" / "instances_val2017.json",
               [10**7 + k for k in range(30)])
    return str(root)


def _ids(ds) -> set[int]:
    return {im["id"] for im in ds.infos}


@pytest.mark.parametrize("dataset", ["coco128", "coco"])
def test_detection_val_is_carved_from_train_by_image_id(dataset, coco_root):
    held = DataConfig(dataset=dataset, root=coco_root, holdout_val=True, image_size=32)
    plain = replace(held, holdout_val=False)
    val, train = build_dataset(held, "val"), build_dataset(held, "train")
    full, test = build_dataset(plain, "train"), build_dataset(plain, "test")
    assert len(val) == round(HOLDOUT_FRACTION * len(full)) == 12
    assert not _ids(val) & _ids(train) and _ids(val) | _ids(train) == _ids(full)
    assert len(val.targets) == len(val) and len(train.targets) == len(train)
    assert _ids(build_dataset(plain, "val")) == _ids(val)
    if dataset == "coco":  # the reported split is val2017, untouched
        assert _ids(test) == {10**7 + k for k in range(30)}
    else:                   # coco128 reports on its own images (a smoke check only)
        assert _ids(test) == _ids(full)
    gt = val.gt_subset(range(len(val)))  # the evaluator's ground truth: the val images only
    assert {im["id"] for im in gt["images"]} == _ids(val)
    assert {a["image_id"] for a in gt["annotations"]} == _ids(val)


def test_holdout_ids_depend_on_the_ids_only():
    ids = list(range(100, 200))
    rows = holdout_ids(ids)
    assert len(rows) == 10 and np.array_equal(rows, holdout_ids(ids))
    shuffled = ids[::-1]
    assert {shuffled[r] for r in holdout_ids(shuffled)} == {ids[r] for r in rows}
    assert len(holdout_ids([5])) == 0 and len(holdout_ids([5, 6])) == 1


def test_mkd_study_reports_on_test_and_searches_on_carved_val(coco_root):
    s = load_study("mkd_ablation").build("smoke")
    rb, sb = s.report_base(), s.search_base()
    assert (rb.eval.split, sb.eval.split, sb.data.holdout_val) == ("test", "val", True)
    text = paragraph(s)
    assert "carved from train, a fixed 10% of the training images" in text
    assert "selects on the reported" not in text and text.endswith("are scored on test.")
    for cfg in (rb, sb):
        check_data(cfg.override({"data.root": coco_root}))
    assert len(s.validate()) > len(s.rows)


# ------------------------------------------------------------------ stages of a searched study
def _capture_stages(monkeypatch) -> list[ExperimentConfig]:
    """Replace run_stage (Ray, MLflow) by a recorder; study_stage still builds the config."""
    import kdray.runtime.driver as driver

    seen: list[ExperimentConfig] = []

    def fake_run_stage(cfg, name, **kw):
        seen.append(cfg)
        return driver.StageResult(f"/ckpt/{name}.pt", {}, None, True)

    monkeypatch.setattr(driver, "run_stage", fake_run_stage)
    return seen


ARGS = SimpleNamespace(storage_path=None, tracking_uri=None, address=None)


def test_m2sd_stage1_of_a_searched_study_leaves_the_carved_val_out(monkeypatch, synth_root):
    """M2SD stage 2 starts from stage 1: with a search, stage 1 trains on `base` without the
    carved val, so the searched trials' val images were never trained on; without a search (rows
    only) the stage keeps the full split."""
    mod = load_study("m2sd_ablation")
    seen = _capture_stages(monkeypatch)
    s = mod.build("smoke")
    s = replace(s, base=s.base.override({"data.root": synth_root, "data.synthetic_classes": 30,
                                         "data.synthetic_per_class": 20}))
    out = mod.with_stage1(s, SimpleNamespace(preset="smoke", **vars(ARGS)))
    assert out.base.train.init_from == "/ckpt/m2sd_ablation_smoke-stage1.pt"
    stage = seen[-1]
    assert stage.data.holdout_val and stage.data.train_split == "base"
    val = build_dataset(stage.data, "val")
    trained = build_dataset(stage.data, "base")
    assert not {int(r) for r in val.rows} & {int(r) for r in trained.rows}
    mod.with_stage1(replace(s, space={}), SimpleNamespace(preset="smoke", **vars(ARGS)))
    assert not seen[-1].data.holdout_val  # --no-search: nothing is scored on the carved val
    rows_only = build_dataset(seen[-1].data, "base")
    assert {int(r) for r in val.rows} & {int(r) for r in rows_only.rows}  # base includes val


def test_mkd_teacher_of_a_searched_study_leaves_the_carved_val_out(monkeypatch, coco_root,
                                                                  tmp_path):
    mod = load_study("mkd_ablation")
    seen = _capture_stages(monkeypatch)
    cards = []   # the teacher is registered with its box AP (the stage here is a recorder)
    import kdray.runtime.teacher_stage as teacher_stage

    monkeypatch.setattr(teacher_stage, "write_card", lambda ckpt, **kw: cards.append((ckpt, kw))
                        or SimpleNamespace(sha256="0" * 64))
    s = mod.build("smoke")
    s = replace(s, base=s.base.override({"data.root": coco_root}))
    out = mod.with_teacher(s, SimpleNamespace(preset="smoke", results_dir=str(tmp_path),
                                              **vars(ARGS)))
    assert out.base.model.teacher_ckpt == "/ckpt/mkd_ablation_smoke-teacher.pt"
    assert [c for c, _ in cards] == ["/ckpt/mkd_ablation_smoke-teacher.pt"]
    assert cards[0][1]["metric"] == "AP" and cards[0][1]["arch"] == "resnet34"
    assert cards[0][1]["registry"] == str(tmp_path / "teachers.json")
    teacher = seen[-1]
    assert teacher.data.holdout_val and teacher.eval.split == "test"
    assert not _ids(build_dataset(teacher.data, "val")) & _ids(build_dataset(teacher.data, "train"))


def test_stage_config_only_holds_out_a_carved_val_when_searching():
    s = load_study("cskd_ablation").build("smoke")
    cfg = s.base.override({"method": "ce"})
    assert s.stage_config(cfg).data.holdout_val == (cfg.data.dataset in CARVED_VAL)
    assert not replace(s, space={}).stage_config(cfg).data.holdout_val
    own_val = cfg.override({"data.dataset": "cifar_fs"})  # a val of its own: nothing to leave out
    assert not s.stage_config(own_val).data.holdout_val
