"""FSCIL session runner: protocols, shipped CEC index lists, session metrics, artifacts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from kdray.config import ConfigError, DataConfig, ExperimentConfig
from kdray.data import DataNotFoundError
from kdray.data.fscil import LIST_DIR, PROTOCOLS, Protocol, fscil_data, read_list
from kdray.data.fscil_files import build_cub200, build_mini_imagenet, mini_csv
from kdray.data.registry import build_dataset, check_data
from kdray.eval.fscil import (
    class_means,
    harmonic_mean,
    run_sessions,
    session_metrics,
    summary_metrics,
)
from kdray.eval.fscil_table import plot_sessions, session_table, write_sessions_parquet

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------------------- shipped lists
def test_shipped_lists_equal_shared_copies():
    src = SHARED / "fscil_cec_index_list"
    assert src.is_dir(), f"missing {src}"
    for name, n in (("cifar100", 9), ("mini_imagenet", 9), ("cub200", 11)):
        for t in range(1, n + 1):
            f = f"{name}/session_{t}.txt"
            assert (LIST_DIR / f).read_bytes() == (src / f).read_bytes(), f


def test_cifar100_lists_sizes_and_disjoint():
    p = PROTOCOLS["fscil_cifar100"]
    sessions = [np.array([int(s) for s in read_list("cifar100", t)]) for t in range(p.sessions + 1)]
    assert [len(s) for s in sessions] == [30000] + [25] * 8  # 60 x 500, then 5-way 5-shot
    allrows = np.concatenate(sessions)
    assert len(np.unique(allrows)) == len(allrows)  # no image in two sessions
    assert allrows.min() >= 0 and allrows.max() < 50000


def test_mini_imagenet_lists_classes_and_shots():
    p = PROTOCOLS["fscil_mini_imagenet"]
    files, wnids = mini_csv("train")
    order = list(dict.fromkeys(wnids))
    cid = dict(zip(files, (order.index(w) for w in wnids)))
    assert len(order) == 100 and len(files) == 50000 and len(mini_csv("test")[0]) == 10000
    for t in range(p.sessions + 1):
        labels = np.array([cid[Path(s).name] for s in read_list("mini_imagenet", t)])
        classes, counts = np.unique(labels, return_counts=True)
        assert list(classes) == list(p.session_classes(t))
        assert set(counts) == ({500} if t == 0 else {5})


def test_cub200_lists_classes_and_shots():
    p = PROTOCOLS["fscil_cub200"]
    for t in range(1, p.sessions + 1):
        lines = read_list("cub200", t)
        labels = np.array([int(s.split("/")[2].split(".")[0]) - 1 for s in lines])
        classes, counts = np.unique(labels, return_counts=True)
        assert list(classes) == list(p.session_classes(t)) and set(counts) == {5}
    base = {int(s.split("/")[2].split(".")[0]) - 1 for s in read_list("cub200", 0)}
    assert base == set(range(100)) and len(read_list("cub200", 0)) == 3000


def test_missing_data_names_paths(tmp_path):
    for build, name in ((build_mini_imagenet, "fscil_mini_imagenet"), (build_cub200, "fscil_cub200")):
        cfg = DataConfig(dataset=name, root=str(tmp_path))
        with pytest.raises(DataNotFoundError) as e:
            build(cfg)
        assert str(tmp_path) in str(e.value) and "To get it" in str(e.value)


# ---------------------------------------------------------------------------- generated protocols
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return DataConfig(dataset="fscil_synthetic", root=str(root), synthetic_per_class=12)


def test_synthetic_sessions(synth):
    data = fscil_data(synth)
    p = data.protocol
    assert (p.num_classes, p.base_classes, p.ways, p.shots, p.sessions) == (100, 60, 5, 5, 8)
    y = np.asarray(data.train.targets)
    seen_rows: set[int] = set()
    for t, rows in enumerate(data.session_rows):
        classes, counts = np.unique(y[rows], return_counts=True)
        assert list(classes) == list(p.session_classes(t))
        assert set(counts) == ({10} if t == 0 else {5})  # 12 per class: 10 train, 2 test
        assert not seen_rows & set(rows.tolist())  # never an earlier session's image
        seen_rows |= set(rows.tolist())
    assert np.bincount(data.test.targets).tolist() == [2] * 100
    base = build_dataset(synth, "base")
    assert len(base) == 600 and max(base.targets) == 59


def test_cifar10_protocol_from_shared_data():
    cfg = DataConfig(dataset="fscil_cifar10", root=str(SHARED))
    data = fscil_data(cfg)
    y = np.asarray(data.train.targets)
    assert [sorted(set(y[r])) for r in data.session_rows] == [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]
    assert [len(r) for r in data.session_rows] == [30000, 10, 10]
    assert len(data.test) == 10000


def test_eval_kind_fscil_needs_fscil_dataset(tmp_path):
    cfg = ExperimentConfig().override({"eval.kind": "fscil", "data.root": str(tmp_path)})
    with pytest.raises(ConfigError, match="not an FSCIL dataset"):
        check_data(cfg)


# ---------------------------------------------------------------------------- session runner
def _toy() -> tuple[Protocol, list[np.ndarray], torch.Tensor, torch.Tensor]:
    """2 base classes + 1 session of 1 way x 2 shots in 2-d; class c sits at angle c * 120°."""
    p = Protocol("toy", 3, 2, 1, 2, 1)
    ang = torch.tensor([0.0, 0.0, 2.1, 2.1, 4.2, 4.2, 99.0])
    feats = torch.stack([ang.cos(), ang.sin()], dim=1)
    feats[-1] = float("nan")  # a row that no session lists must never be read
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    return p, [np.array([0, 1, 2, 3]), np.array([4, 5])], feats, labels


def test_run_sessions_hand_computed():
    p, rows, tr_f, tr_y = _toy()
    # test: class 0 right, class 1 right, class 2: one right, one looks like class 0
    ang = torch.tensor([0.1, 2.0, 4.3, 0.2])
    te_f, te_y = torch.stack([ang.cos(), ang.sin()], dim=1), torch.tensor([0, 1, 2, 2])
    rec = run_sessions(p, rows, tr_f, tr_y, te_f, te_y)
    assert [r["n_test"] for r in rec] == [2, 4]          # only seen classes are evaluated
    assert [r["seen_classes"] for r in rec] == [2, 3]
    assert rec[0]["session_acc"] == 100.0 and math.isnan(rec[0]["novel_acc"])
    assert rec[1]["session_acc"] == 75.0
    assert rec[1]["base_acc"] == 100.0 and rec[1]["novel_acc"] == 50.0
    assert rec[1]["hm"] == pytest.approx(2 * 100 * 50 / 150)
    m = session_metrics(rec)
    assert m["test/fscil_avg"] == pytest.approx(87.5) and m["test/fscil_pd"] == pytest.approx(25.0)
    assert m["test/fscil_last"] == 75.0 and m["test/fscil_s0"] == 100.0


def test_session_rows_of_other_classes_rejected():
    p, rows, tr_f, tr_y = _toy()
    with pytest.raises(ValueError, match="outside classes"):
        run_sessions(p, [np.array([0, 2, 4]), rows[1]], tr_f, tr_y, tr_f[:6], tr_y[:6])


def test_class_means_and_summary():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    torch.testing.assert_close(class_means(f, torch.tensor([1, 1, 0]), [0, 1]),
                               torch.tensor([[5.0, 5.0], [2.0, 1.0]]))
    assert summary_metrics([60.0, 50.0, 40.0]) == {"avg": 50.0, "pd": 20.0, "last": 40.0}
    assert harmonic_mean(60.0, 40.0) == pytest.approx(48.0) and harmonic_mean(0.0, 0.0) == 0.0


def test_session_artifacts(tmp_path):
    p, rows, tr_f, tr_y = _toy()
    rec = run_sessions(p, rows, tr_f, tr_y, tr_f[:6], tr_y[:6])
    assert write_sessions_parquet(rec, tmp_path / "s.parquet", epoch=3) == 2
    table = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert table["session"] == [0, 1] and table["accuracy"] == [r["session_acc"] for r in rec]
    assert table["epoch"] == [3, 3]
    plot_sessions(rec, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # creating the SQLite MLflow schema takes ~10-20 s on 2 busy cores
def test_tracker_logs_session_table_and_curve(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from kdray.runtime.mlflow_store import default_tracking_uri, get_or_create_experiment
    from kdray.runtime.tracking import TrialTracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri()
    client = MlflowClient(uri)
    tr = TrialTracker(uri, get_or_create_experiment(client, "fscil"), None, run_key="k",
                      run_name="r")
    p, rows, tr_f, tr_y = _toy()
    rec = run_sessions(p, rows, tr_f, tr_y, tr_f[:6], tr_y[:6])
    tr.log_eval({"sessions": session_table(rec)}, session_metrics(rec), epoch=1)
    names = {Path(f.path).name for f in client.list_artifacts(tr.run_id, "eval")}
    assert {"sessions.parquet", "sessions.png", "episodes.parquet"} <= names
    local = client.download_artifacts(tr.run_id, "eval/sessions.parquet", str(tmp_path / "dl"))
    assert pq.read_table(local).to_pydict()["accuracy"] == [
        r["session_acc"] for r in rec]
