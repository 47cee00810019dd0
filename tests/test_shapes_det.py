"""`shapes_det`, the generated detection set of the MKD mini tier: exact boxes, the COCO layout
the detection loader reads, determinism and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdray.config import ExperimentConfig
from kdray.data import coco, shapes_det


def _cfg(root: Path) -> ExperimentConfig:
    return ExperimentConfig().override({"method": "mkd", "data.dataset": "shapes_det",
                                        "data.root": str(root), "data.image_size": 128,
                                        "eval.kind": "coco"})


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes_det, "SPLIT_SIZES", {"train": 60, "test": 20})


@pytest.mark.parametrize("cx, cy, r", [(40.0, 50.0, 12.0), (63.3, 80.7, 27.5), (14.0, 114.0, 13.0)])
def test_disk_box_is_its_hand_computed_extent(cx: float, cy: float, r: float) -> None:
    """A disk has radius 0.9 r whatever the rotation: its box is [c - 0.9 r, c + 0.9 r] up to the
    sampling: half a supersampled pixel, 1 / 4 px."""
    window, mask = shapes_det._place(np.random.default_rng(0), 0, cx, cy, r)
    box = shapes_det.tight_box(*window, mask)
    want = np.array([cx - 0.9 * r, cy - 0.9 * r, cx + 0.9 * r, cy + 0.9 * r])
    assert np.abs(box - want).max() <= 0.25 + 1e-6, (box, want)   # half a supersampled pixel


def test_every_shape_fits_its_window() -> None:
    """No shape is cut by the window `_place` renders it in (the window is what bounds the box)."""
    rng = np.random.default_rng(1)
    for cls in range(len(shapes_det.CLASSES)):
        for _ in range(20):
            (rows, cols), mask = shapes_det._place(rng, cls, 64.0, 64.0, 28.0)
            assert mask.any()
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_images_are_deterministic_with_valid_disjoint_boxes() -> None:
    a = shapes_det.render(np.random.default_rng([1, 1]))
    b = shapes_det.render(np.random.default_rng([1, 1]))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    rng = np.random.default_rng(7)
    counts, classes = [], set()
    for _ in range(200):
        img, objects = shapes_det.render(rng)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        counts.append(len(objects))
        for i, (box, cls) in enumerate(objects):
            classes.add(cls)
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert 8 <= x1 - x0 <= 60 and 8 <= y1 - y0 <= 60
            for other, _ in objects[i + 1:]:
                assert shapes_det._iou(np.array(box), np.array(other)) == 0.0
    assert set(counts) == {1, 2, 3} and classes == set(range(3))


def test_coco_layout_splits_and_cache(tmp_path: Path, small, monkeypatch) -> None:
    cfg = _cfg(tmp_path)
    spec = coco.SPECS["shapes_det"]
    train = spec.build(cfg.data, "train")
    test, val = spec.build(cfg.data, "test"), spec.build(cfg.data, "val")
    assert (len(train), len(test), len(val)) == (60, 20, 6)
    assert spec.num_classes(cfg.data, "train") == 3 and train.label_to_cat == [1, 2, 3]
    folder = tmp_path / "shapes_det" / f"v{shapes_det.VERSION}"
    js = json.loads((folder / "annotations" / "instances_test.json").read_text())
    assert [c["name"] for c in js["categories"]] == list(shapes_det.CLASSES)
    # the loader's targets are the json's boxes (xywh -> xyxy), untouched at native size
    x, t = test[0]
    first = [a for a in js["annotations"] if a["image_id"] == t["image_id"]]
    want = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in first]
    assert x.shape == (3, 128, 128) and t["boxes"].tolist() == want
    assert t["labels"].tolist() == [a["category_id"] - 1 for a in first]
    # train and test are different images
    assert not np.array_equal(spec.build(cfg.data, "train")[0][0].numpy(), x.numpy())

    def boom(*a, **k):
        raise AssertionError("regenerated")
    monkeypatch.setattr(shapes_det, "generate", boom)   # the DONE set is reused
    assert len(spec.build(cfg.data, "test")) == 20
