"""Split discipline: the val carved from train for datasets without one (disjoint, stratified,
stable), Study's split-free metric and val-only selection, and a short study on generated data in
which a Tune callback records every result dict: no `test/` key ever reaches Tune during the
search, and the val-selected best point is re-run and reported on test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdray.config import ConfigError, DataConfig, ExperimentConfig
from kdray.data.base import HOLDOUT_FRACTION, ArrayDataset, holdout_rows
from kdray.data.registry import CARVED_VAL, build_dataset, check_data, with_carved_val
from kdray.search import Float
from kdray.study import BEST_LABEL, Row, Study

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the carved val split
def test_holdout_rows_are_stratified_deterministic_and_leave_train_nonempty():
    y = np.repeat(np.arange(7), [50, 10, 3, 2, 1, 20, 40])
    rows = holdout_rows(y)
    assert np.array_equal(rows, holdout_rows(y)) and np.array_equal(rows, np.unique(rows))
    for c, n in enumerate([50, 10, 3, 2, 1, 20, 40]):
        k = int((y[rows] == c).sum())
        assert k == (0 if n < 2 else min(n - 1, max(1, round(HOLDOUT_FRACTION * n)))), (c, k)
    # candidates restrict the draw; a class's draw does not depend on the other classes
    cand = np.flatnonzero(y != 0)
    assert set(holdout_rows(y, cand)) <= set(cand)
    assert np.array_equal(holdout_rows(y, cand), rows[y[rows] != 0])


def test_holdout_rows_are_the_same_in_a_fresh_process():
    """Stable across runs: seeded by the class id only (no global RNG, no hash randomisation)."""
    y = np.repeat(np.arange(5), 37)
    code = ("import numpy as np; from kdray.data.base import holdout_rows; "
            "print(holdout_rows(np.repeat(np.arange(5), 37)).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"},
                         check=True)
    assert json.loads(out.stdout) == holdout_rows(y).tolist()


def _fake_build(cfg: DataConfig, split: str) -> ArrayDataset:
    """A CIFAR-shaped builder: one image array, train rows 0..299, test rows 300..359."""
    images = np.zeros((360, 4, 4, 3), dtype=np.uint8)
    rows = np.arange(300) if split == "train" else np.arange(300, 360)
    return ArrayDataset(images, rows, rows % 10, [str(c) for c in range(10)])


def _image_ids(ds) -> set[int]:
    """Rows of the shared image array behind a (possibly nested) split."""
    if hasattr(ds, "parent"):
        return {int(r) for r in np.asarray(ds.parent.rows)[ds.rows]}
    return {int(r) for r in ds.rows}


def test_carved_val_is_disjoint_from_train_and_test_and_stratified():
    build = with_carved_val(_fake_build)
    plain, held = DataConfig(), DataConfig(holdout_val=True)
    val, test = build(held, "val"), build(held, "test")
    train = build(held, "train")
    assert len(val) == 30 and np.bincount(val.targets).tolist() == [3] * 10
    assert not _image_ids(val) & _image_ids(train) and not _image_ids(val) & _image_ids(test)
    assert _image_ids(val) | _image_ids(train) == set(range(300))
    assert len(build(plain, "train")) == 300  # train leaves val out only when asked
    assert _image_ids(build(plain, "val")) == _image_ids(val)  # same val either way
    assert _image_ids(build(held, "val")) == _image_ids(val)   # and on every build


def test_fscil_carved_val_leaves_sessions_and_test_alone(synth_root):
    """fscil_synthetic: val comes from training images no incremental session uses; with
    holdout_val it leaves `train`, `base` and the base session's rows; test is untouched."""
    from kdray.data.fscil import carved_val_rows, fscil_data

    over = {"dataset": "fscil_synthetic", "root": synth_root, "synthetic_classes": 30,
            "synthetic_per_class": 20}
    plain, held = DataConfig(**over), DataConfig(**over, holdout_val=True)
    val = build_dataset(held, "val")
    ids = {s: _image_ids(build_dataset(held, s)) for s in ("train", "base", "test")}
    v = _image_ids(val)
    assert v and all(not v & ids[s] for s in ids)
    assert _image_ids(build_dataset(plain, "val")) == v
    assert v <= _image_ids(build_dataset(plain, "base")) | _image_ids(build_dataset(plain, "train"))
    data = fscil_data(held)
    assert not set(data.session_rows[0]) & set(carved_val_rows(data))
    for t in range(1, len(data.session_rows)):  # the few shots stay training images
        assert not set(data.session_rows[t]) & set(carved_val_rows(data))
        assert np.array_equal(data.session_rows[t], fscil_data(plain).session_rows[t])
    assert set(np.asarray(val.targets)) == set(range(data.protocol.num_classes))


def test_evaluating_on_a_carved_val_requires_holdout(synth_root):
    cfg = ExperimentConfig(method="ce").override({
        "data.dataset": "fscil_synthetic", "data.root": synth_root, "data.train_split": "train",
        "data.synthetic_classes": 30, "data.synthetic_per_class": 20, "eval.kind": "top1",
        "eval.split": "val"})
    with pytest.raises(ConfigError, match="holdout_val"):
        check_data(cfg)
    check_data(cfg.override({"data.holdout_val": True}))
    assert {"cifar10", "cifar100", "fscil_cifar100"} <= set(CARVED_VAL)


# ------------------------------------------------------------------ Study: val-only selection
def _study(base: ExperimentConfig, **kw) -> Study:
    return Study(name="splits", base=base, metric="top1", columns=(("top-1", "top1"),),
                 rows=(Row("CE", {}),), space={"optim.lr": Float(1e-3, 1e-2, log=True)}, **kw)


def test_study_metric_names_no_split_and_searches_run_on_val(synth_root):
    base = ExperimentConfig(method="ce").override({"data.dataset": "cifar10",
                                                   "eval.kind": "top1"})
    with pytest.raises(ConfigError, match="without its split"):
        Study(name="x", base=base, metric="val/top1")
    with pytest.raises(ConfigError, match="without its split"):
        Study(name="x", base=base, metric="top1", columns=(("t", "test/top1"),))
    with pytest.raises(ConfigError, match="always evaluate on val"):
        Study(name="x", base=base, metric="top1", space={"eval.split": Float(0, 1)})
    s = _study(base)
    assert (s.key(), s.select_key) == ("test/top1", "val/top1")
    sb, rb = s.search_base(), s.report_base()
    assert (sb.eval.split, sb.data.holdout_val) == ("val", True)  # cifar10: carved val
    assert (rb.eval.split, rb.data.holdout_val) == ("test", False)
    native = _study(base.override({"data.dataset": "synthetic_fs"})).search_base()
    assert (native.eval.split, native.data.holdout_val) == ("val", False)


def test_searched_best_ranks_on_val_and_refuses_test_numbers():
    s = _study(ExperimentConfig(method="ce"))
    t = [{"name": "a", "status": "finished", "metrics": {"val/top1": 50.0}},
         {"name": "b", "status": "stopped", "metrics": {"val/top1": 70.0}},
         {"name": "c", "status": "error", "metrics": {"val/top1": 99.0}},
         {"name": "d", "status": "finished", "metrics": {"val/top1": float("nan")}}]
    assert s.searched_best(t)["name"] == "b"
    assert s.searched_best([]) is None
    with pytest.raises(ValueError, match="test metrics"):
        s.searched_best([*t, {"name": "e", "status": "finished", "metrics": {"test/top1": 1.0}}])


# ------------------------------------------------------------------ a short study under Tune
class Recorder:
    """A ray.tune Callback keeping (phase, result dict) of every result Tune receives."""

    def __new__(cls):
        from ray.tune import Callback

        class _Recorder(Callback):
            def __init__(self) -> None:
                self.results: list[tuple[str, dict]] = []

            def on_trial_result(self, iteration, trials, trial, result, **info):
                cfg = trial.config
                phase = "grid" if "row" in cfg else ("best" if "seed" in cfg else "search")
                self.results.append((phase, dict(result)))

        return _Recorder()


@pytest.mark.slow
def test_search_never_shows_tune_a_test_number_and_the_best_row_is_on_test(
        ray_session, tmp_path, synth_root):
    import mlflow

    from kdray.runtime.tune import run_study

    base = ExperimentConfig(method="ce").override({
        "data.dataset": "fscil_synthetic", "data.root": synth_root, "data.train_split": "train",
        "data.synthetic_classes": 30, "data.synthetic_per_class": 20, "data.image_size": 16,
        "data.batch_size": 16, "data.augment": "none", "model.arch": "conv2", "train.epochs": 1,
        "train.steps_per_epoch": 2, "eval.kind": "top1", "eval.split": "test",
        "eval.batch_size": 64})
    study = _study(base, num_samples=2, seeds=(0,))
    rec = Recorder()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = run_study(study, storage_path=str(tmp_path / "ray"), tracking_uri=uri,
                    results_dir=str(tmp_path / "results"), callbacks=[rec])
    phases = {p for p, _ in rec.results}
    assert phases == {"grid", "search", "best"}, phases
    for phase, r in rec.results:
        keys = set(r)
        if phase == "search":
            assert not any(k.startswith("test/") for k in keys), sorted(keys)
            assert "val/top1" in keys
        else:
            assert "test/top1" in keys and not any(k.startswith("val/") for k in keys)
    # best.json / StudyResult.best: a searched trial, selected and scored on val
    assert res.best is not None and res.best["label"] == "search"
    assert res.best["config"]["eval"]["split"] == "val"
    assert res.best["config"]["data"]["holdout_val"] is True
    assert not any(k.startswith("test/") for k in res.best["metrics"])
    client = mlflow.MlflowClient(uri)
    got = json.loads(Path(client.download_artifacts(res.parent_run_id, "best.json",
                                                    str(tmp_path / "dl"))).read_text())
    assert got["selected_on"] == "val/top1" and got["name"] == res.best["name"]
    assert "val/top1" in got["metrics"] and not any(k.startswith("test/") for k in got["metrics"])
    # the val-selected point, re-run with the study's seeds and reported on test
    best_rows = [r for r in res.rows if r["label"] == BEST_LABEL]
    assert len(best_rows) == 1 and best_rows[0]["split"] == "test"
    assert best_rows[0]["params"] == res.best["params"] and "top1" in best_rows[0]["metrics"]
    assert {r["split"] for r in res.rows if r["label"] == "search"} == {"val"}
    table = Path(res.results_path).read_text()
    assert f"| {BEST_LABEL} (lr=" in table and "selected on val/top1 only" in table
