"""MLflow tracking against a real SQLite store in tmp_path; everything is read back via MlflowClient."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from kdray.runtime.mlflow_store import (
    default_artifact_location,
    default_tracking_uri,
    episode_records,
    get_or_create_experiment,
)
from kdray.runtime.tracking import RunLogger, StudyRun, TrialTracker, start_study_run
from kdray.study import artifacts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, MlflowClient, Path]:
    """One SQLite store for the module (creating its schema costs seconds); tests use their
    own experiments in it."""
    root = tmp_path_factory.mktemp("mlflow").resolve()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri = default_tracking_uri()
    return uri, MlflowClient(uri), root


def _records(accs: dict[tuple[int, str], list[float]]) -> dict[str, list[dict]]:
    """Episode records for 5-way groups {(shot, classifier): [accuracy per episode]}."""
    out: dict[str, list[dict]] = {}
    for (shot, clf), values in accs.items():
        out[f"5w{shot}s_{clf}"] = [
            {"episode_id": i, "way": 5, "shot": shot, "queries": 15, "classifier": clf,
             "class_ids": [i, i + 1, i + 2, i + 3, 90 + shot], "accuracy": a}
            for i, a in enumerate(values)]
    return out


def _download(client: MlflowClient, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst)))


def test_default_uri_is_absolute_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    here = tmp_path.resolve()
    assert default_tracking_uri() == f"sqlite:///{here}/mlflow.db"
    assert default_artifact_location(default_tracking_uri()) == f"file://{here}/mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///sub/x.db")
    assert default_tracking_uri() == f"sqlite:///{here}/sub/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    assert default_tracking_uri() == "http://127.0.0.1:5055"
    assert default_artifact_location("http://127.0.0.1:5055") is None


def test_parent_child_in_explicit_experiment(store, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, client, root = store
    decoy = get_or_create_experiment(client, "decoy")
    # what mlflow.set_experiment would have exported in a driver (docs/runtime.md §P5)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", decoy)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "decoy")
    parent = start_study_run(uri, "kdray-test", "study-a", params={"optim.lr": 0.1},
                             tags={"kdray.metric": "val/acc"})
    exp = client.get_experiment_by_name("kdray-test")
    assert exp.experiment_id not in (decoy, "0")
    assert exp.artifact_location == f"file://{root}/mlartifacts"
    assert get_or_create_experiment(client, "kdray-test") == exp.experiment_id

    child = TrialTracker(uri, exp.experiment_id, parent, run_key="study-a/t0", run_name="t0")
    child.log_dict_json({"a": 1}, "config.json")
    p_run, c_run = client.get_run(parent), client.get_run(child.run_id)
    assert p_run.info.experiment_id == c_run.info.experiment_id == exp.experiment_id
    assert p_run.data.tags["kdray.study"] == "study-a"
    assert p_run.data.tags["kdray.metric"] == "val/acc"
    assert p_run.data.params == {"optim.lr": "0.1"}
    assert c_run.data.tags["mlflow.parentRunId"] == parent
    assert c_run.data.tags["kdray.run_key"] == "study-a/t0"
    assert c_run.data.tags["mlflow.runName"] == "t0"
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_id for r in kids] == [child.run_id]
    assert client.search_runs([decoy, "0"]) == []
    # the artifact landed under the experiment's explicit root, not ./mlruns
    assert (root / "mlartifacts" / child.run_id / "artifacts" / "config.json").is_file()
    assert not (root / "mlruns").exists()


def test_a_run_found_again_does_not_log_its_recorded_epochs_twice(store) -> None:
    """A restart from a checkpoint older than the last epoch recorded (the last report was not
    consumed before the interruption) trains that epoch again: its steps are not logged twice,
    the ones after it are."""
    uri, client, _ = store
    exp = get_or_create_experiment(client, "again")
    first = TrialTracker(uri, exp, None, run_key="k", run_name="r")
    for epoch, step in ((1, 3), (2, 6)):
        first.log_metrics({"train_step/loss": 1.0 / epoch}, step - 1)
        first.log_metrics({"epoch": epoch, "train/loss": 1.0 / epoch}, step)
    again = TrialTracker(uri, exp, None, run_key="k", run_name="r")
    assert again.run_id == first.run_id and again.resumed and again.recorded_step == 6
    assert again.log_metrics({"train_step/loss": 0.5}, 5) == 0
    assert again.log_metrics({"epoch": 2, "train/loss": 0.5}, 6) == 0
    assert again.log_metrics({"epoch": 3, "train/loss": 0.25}, 9) == 2
    hist = client.get_metric_history(first.run_id, "epoch")
    assert [(m.step, m.value) for m in hist] == [(3, 1.0), (6, 2.0), (9, 3.0)]
    assert len(client.get_metric_history(first.run_id, "train_step/loss")) == 2
    assert TrialTracker(uri, exp, None, run_key="new", run_name="n").recorded_step == -1


def test_params_and_metric_history(store) -> None:
    uri, client, root = store
    exp = get_or_create_experiment(client, "params")
    tr = TrialTracker(uri, exp, None, run_key="k", run_name="r")
    flat = {f"p.{i:03d}": i for i in range(250)}  # > 100 params: several batches
    flat.update({"eval.shots": (1, 5), "data.name": "cifar_fs", "optim.lr": 0.001,
                 "train.init": None, "long": "x" * 7000})
    assert tr.log_params(flat) == 255
    params = client.get_run(tr.run_id).data.params
    assert len(params) == 255
    assert params["eval.shots"] == "[1, 5]"
    assert params["p.249"] == "249" and params["optim.lr"] == "0.001"
    assert params["train.init"] == "None"
    assert len(params["long"]) == 6000 and params["long"].endswith("...")
    # re-logging (a resumed run) is a no-op; a changed value is skipped, not an MlflowException
    assert tr.log_params(flat) == 0
    assert tr.log_params({"optim.lr": 0.5, "new": 1}) == 1
    params = client.get_run(tr.run_id).data.params
    assert params["optim.lr"] == "0.001" and params["new"] == "1"

    losses = [2.0, 1.5, 0.75]
    for step, loss in enumerate(losses):
        n = tr.log_metrics({"train/loss": loss, "val/acc": 0.5 + step / 10,
                            "nan": float("nan"), "inf": math.inf, "text": "x", "none": None},
                           step=step * 10)
        assert n == 2
    hist = sorted(client.get_metric_history(tr.run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(0, 2.0), (10, 1.5), (20, 0.75)]
    acc = sorted(client.get_metric_history(tr.run_id, "val/acc"), key=lambda m: m.step)
    assert [m.value for m in acc] == pytest.approx([0.5, 0.6, 0.7])
    for key in ("nan", "inf", "text", "none"):
        assert client.get_metric_history(tr.run_id, key) == []
    assert tr.log_metrics({f"m{i}": float(i) for i in range(1500)}, step=3) == 1500  # 2 batches
    metrics = client.get_run(tr.run_id).data.metrics
    assert metrics["m1499"] == 1499.0 and len(metrics) == 1502


def test_eval_plots_and_environment(store, tmp_path: Path) -> None:
    uri, client, root = store
    exp = get_or_create_experiment(client, "eval")
    tr = TrialTracker(uri, exp, None, run_key="k", run_name="r")
    epoch1 = _records({(1, "proto"): [0.2, 0.4, 0.4, 0.2], (5, "proto"): [0.6, 0.6, 0.6]})
    epoch2 = _records({(1, "proto"): [0.5, 0.7, 0.9, 0.7], (5, "proto"): [0.8, 0.8, 0.8]})
    tr.log_eval(epoch1, {"val/acc_5w1s": 0.3}, epoch=1)
    written = tr.log_eval(epoch2, {"val/acc_5w1s": 0.7}, epoch=2)

    top = {Path(f.path).name for f in client.list_artifacts(tr.run_id, "eval")}
    assert top == {"episodes.parquet", "summary.json", "epoch_001", "epoch_002"}
    latest = pd.read_parquet(_download(client, tr.run_id, "eval/episodes.parquet", tmp_path / "a"))
    assert len(latest) == 7
    assert latest["accuracy"].tolist() == pytest.approx([0.5, 0.7, 0.9, 0.7, 0.8, 0.8, 0.8])
    assert set(latest["epoch"]) == {2}
    assert latest["shot"].tolist() == [1, 1, 1, 1, 5, 5, 5]
    assert list(latest["class_ids"][1]) == [1, 2, 3, 4, 91]
    assert latest["classifier"].tolist() == ["proto"] * 7 and set(latest["queries"]) == {15}
    old = pd.read_parquet(_download(client, tr.run_id, "eval/epoch_001/episodes.parquet",
                                    tmp_path / "b"))
    assert old["accuracy"].tolist() == pytest.approx([0.2, 0.4, 0.4, 0.2, 0.6, 0.6, 0.6])
    assert set(old["epoch"]) == {1}

    summary = json.loads(_download(client, tr.run_id, "eval/summary.json",
                                   tmp_path / "c").read_text())
    assert summary == json.loads(json.dumps(written))
    g1, g5 = summary["groups"]["5w1s_proto"], summary["groups"]["5w5s_proto"]
    # [0.5, 0.7, 0.9, 0.7]: mean 70%, population std sqrt(0.02), CI = 1.96 * std / sqrt(4), in %
    assert summary["unit"] == "%"
    assert g1["mean"] == pytest.approx(70.0) and g1["n"] == 4
    assert g1["ci95"] == pytest.approx(98 * math.sqrt(0.02))
    assert (g5["mean"], g5["ci95"], g5["n"]) == (pytest.approx(80.0), pytest.approx(0.0), 3)
    shown = json.loads(_download(client, tr.run_id, "eval/epoch_002/episodes_table.json",
                                 tmp_path / "t").read_text())  # MLflow's table artifact
    cols = shown["columns"]
    acc = [row[cols.index("accuracy (%)")] for row in shown["data"]]
    assert acc == pytest.approx([50, 70, 90, 70, 80, 80, 80])
    assert summary["epoch"] == 2 and summary["reported"] == {"val/acc_5w1s": 0.7}

    history = [{"epoch": e, "train/loss": 1.0 / (e + 1), "val/acc_5w1s": 0.3 + e / 10,
                "val/acc_5w1s_ci95": 0.01} for e in range(3)]
    tr.log_curves(history)
    tr.log_episode_hist(epoch2)
    for name in ("plots/curves.png", "plots/episode_hist.png"):
        png = _download(client, tr.run_id, name, tmp_path / "d")
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert artifacts.plot_curves(history, tmp_path / "x.png") == ["train/loss", "val/acc_5w1s"]
    history = [{"epoch": e, "train/loss": 2.0 / e, "train/ce": 1.0 / e, "train/lr": 0.1 / e,
                "test/acc_5w1s": 40.0 + e, "test/acc_5w1s_ci95": 1.0} for e in (1, 2, 3)]
    fig = tmp_path / "curves.png"
    keys = artifacts.plot_curves(history, fig, "a · s0 · test split")
    assert keys == ["train/ce", "train/loss", "train/lr", "test/acc_5w1s"]  # 3 panels
    assert _png_size(fig) == (1200, 300)  # 3 panels of 4 x 3 inches at 100 dpi

    info = tr.log_environment({"world_size": 2})
    env = json.loads(_download(client, tr.run_id, "environment.json", tmp_path / "e").read_text())
    assert {"python", "packages", "git_sha", "hostname", "platform", "cpu_count",
            "cuda_devices", "world_size"} <= set(env)
    assert {"torch", "torchvision", "timm", "ray", "optuna", "mlflow"} <= set(env["packages"])
    assert env["packages"]["mlflow"] == info["packages"]["mlflow"] and env["world_size"] == 2
    assert env["git_sha"] is None or len(env["git_sha"]) == 40


def test_episode_records_read_back_the_last_evaluation(store) -> None:
    """What run_study hands the results table for the paired per-episode Δ: the last
    evaluation's records, and None for a run that logged no episodes (top-1 evaluation)."""
    uri, client, _ = store
    exp = get_or_create_experiment(client, "episodes")
    tr = TrialTracker(uri, exp, None, run_key="e", run_name="e")
    tr.log_eval(_records({(1, "proto"): [0.2, 0.4]}), {}, epoch=1)
    tr.log_eval(_records({(1, "proto"): [0.5, 0.75], (5, "logreg"): [1.0]}), {}, epoch=2)
    assert episode_records(client, tr.run_id) == [
        {"episode_id": 0, "way": 5, "shot": 1, "classifier": "proto", "accuracy": 0.5},
        {"episode_id": 1, "way": 5, "shot": 1, "classifier": "proto", "accuracy": 0.75},
        {"episode_id": 0, "way": 5, "shot": 5, "classifier": "logreg", "accuracy": 1.0}]
    top1 = TrialTracker(uri, exp, None, run_key="t", run_name="t")
    top1.log_metrics({"val/top1": 50.0}, step=1)
    assert episode_records(client, top1.run_id) is None


def test_trial_resume_identity_and_noop(store) -> None:
    uri, client, root = store
    exp = get_or_create_experiment(client, "resume")
    parent = start_study_run(uri, exp, "s")
    first = TrialTracker(uri, exp, parent, run_key="s/trial_1", run_name="t1")
    first.log_metrics({"train/loss": 3.0}, step=0)
    first.log_metrics({"train/loss": 2.0}, step=1)
    first.set_terminated("FAILED")  # the worker crashed
    again = TrialTracker(uri, exp, parent, run_key="s/trial_1", run_name="t1")
    assert again.run_id == first.run_id and again.resumed and not first.resumed
    assert client.get_run(again.run_id).info.status == "RUNNING"
    again.log_metrics({"train/loss": 1.0}, step=2)
    hist = sorted(client.get_metric_history(again.run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    other = TrialTracker(uri, exp, parent, run_key="s/trial_2", run_name="t2")
    assert other.run_id != first.run_id
    new_parent = start_study_run(uri, exp, "s2")
    moved = TrialTracker(uri, exp, new_parent, run_key="s/trial_1", run_name="t1")
    assert moved.run_id != first.run_id  # identity is (parent, run_key)

    n_runs = len(client.search_runs([exp]))
    for noop in (RunLogger(), TrialTracker(uri, exp, parent, run_key="s/trial_3",
                                           run_name="t3", enabled=False)):
        assert noop.run_id is None and not noop.enabled
        assert noop.log_params({"a": 1}) == 0 and noop.log_metrics({"a": 1.0}, 0) == 0
        assert noop.log_eval(_records({(1, "proto"): [1.0]}), {}, 0) is None
        noop.log_curves([])
        noop.log_dict_json({}, "x.json")
        noop.set_tag("a", "b")
        noop.set_terminated("FINISHED")
    assert len(client.search_runs([exp])) == n_runs


def test_study_parent_reuse_and_resume(store) -> None:
    uri, client, root = store
    p1 = start_study_run(uri, "studies", "s", params={"a": 1})
    exp = client.get_experiment_by_name("studies").experiment_id
    assert start_study_run(uri, exp, "s", params={"a": 1}) == p1  # unfinished: reused (by id)
    # a trial run tagged with the same study name must not be taken for the parent
    TrialTracker(uri, exp, p1, run_key="s/t", run_name="t", tags={"kdray.study": "s"})
    assert start_study_run(uri, "studies", "s") == p1
    assert start_study_run(uri, "studies", "other") != p1
    RunLogger(client, p1).set_terminated("FINISHED")
    p2 = start_study_run(uri, "studies", "s")  # finished and no resume: a new parent
    assert p2 != p1
    StudyRun(uri, "studies", "s").set_terminated("KILLED")
    assert client.get_run(p2).info.status == "KILLED"
    resumed = StudyRun(uri, "studies", "s", params={"a": 1}, resume=True)
    assert resumed.run_id == p2 and resumed.resumed  # newest parent, reopened
    assert client.get_run(p2).info.status == "RUNNING"
    with pytest.raises(ValueError):
        resumed.set_terminated("DONE")
    assert client.get_experiment_by_name("0") is None and client.get_experiment_by_name(exp) is None


def test_episode_writer_rejects_incomplete_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accuracy"):
        artifacts.write_episodes_parquet([{"episode_id": 0, "way": 5, "shot": 1,
                                           "classifier": "proto"}], tmp_path / "e.parquet")
    n = artifacts.write_episodes_parquet([{"episode_id": 3, "way": 5, "shot": 1,
                                           "classifier": "proto", "accuracy": 0.25}],
                                         tmp_path / "e.parquet")
    df = pd.read_parquet(tmp_path / "e.parquet")
    assert n == 1 and df["episode_id"].tolist() == [3] and list(df["class_ids"][0]) == []
    assert df["queries"].isna().all() and df["epoch"].isna().all()


def test_results_files_name_the_tracking_store_relative_to_the_project(tmp_path, monkeypatch):
    from kdray.runtime.study_report import portable_uri

    monkeypatch.chdir(tmp_path)
    assert portable_uri(f"sqlite:///{tmp_path}/runs/mlflow.db") == "sqlite:///runs/mlflow.db"
    assert portable_uri("sqlite:////elsewhere/m.db") == "sqlite:///m.db"
    assert portable_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert portable_uri("sqlite:////elsewhere/m.db", keep_folder=True) == "sqlite:///elsewhere/m.db"


def test_results_headers_name_the_command_without_absolute_paths(tmp_path, monkeypatch):
    from kdray.runtime.study_report import portable_command

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    argv = [str(repo / "studies" / "sskd_ablation.py"), "--preset", "mini", "--set",
            f"model.teacher_ckpt={tmp_path}/ray_results/t2/checkpoint.pt", "--set",
            "optim.lr=0.1", "--results-dir", "/elsewhere/results"]
    assert portable_command(argv) == (
        "python studies/sskd_ablation.py --preset mini --set "
        "model.teacher_ckpt=ray_results/t2/checkpoint.pt --set optim.lr=0.1 "
        "--results-dir elsewhere/results")


def _png_size(path: Path) -> tuple[int, int]:
    import struct

    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    return struct.unpack(">II", head[16:24])


def test_episode_histogram_has_one_bin_per_possible_accuracy(tmp_path: Path) -> None:
    """5-way x 3 queries = 15 queries per episode: accuracies are k/15; the bins are centred on
    them (width 100/15 %), so no bin falls between two possible values."""
    from matplotlib.figure import Figure

    seen = {}
    orig = Figure.savefig

    def keep(fig, *a, **k):
        seen["bars"] = [(round(p.get_x(), 6), round(p.get_width(), 6), p.get_height())
                        for p in fig.axes[0].patches]
        return orig(fig, *a, **k)

    recs = [{"episode_id": i, "way": 5, "shot": 1, "queries": 3, "classifier": "proto",
             "accuracy": k / 15} for i, k in enumerate([5, 6, 6, 9])]
    import unittest.mock as um

    with um.patch.object(Figure, "savefig", keep):
        assert artifacts.plot_episode_hist(recs, tmp_path / "h.png", "t") == ["5w1s_proto"]
    step = 100 / 15
    bars = seen["bars"]
    assert [h for _, _, h in bars] == [1, 2, 0, 0, 1]  # 5/15, 6/15, 7/15, 8/15, 9/15
    assert all(w == pytest.approx(step) for _, w, _ in bars)
    assert bars[0][0] == pytest.approx(4.5 * step)  # centred on 5/15
