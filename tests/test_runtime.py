"""Runtime: Ray Train fit (DDP, fault tolerance, MLflow record), studies (failing trial, resume),
and every bad input rejected before Ray starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import fail_once, kill_once

from kdray.config import ConfigError, ExperimentConfig
from kdray.data import DataNotFoundError

REPO = Path(__file__).resolve().parents[1]


def small_cfg(root: str, **over) -> ExperimentConfig:
    base = {"method": "ce", "data.root": root, "model.arch": "conv2", "data.batch_size": 32,
            "train.epochs": 3, "train.steps_per_epoch": 5, "eval.shots": "1",
            "eval.episodes": 30, "data.synthetic_classes": 30, "data.synthetic_per_class": 20,
            "train.log_every": 2}
    base.update(over)
    return ExperimentConfig().override(base)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail loudly if anything tries to start or connect to Ray."""
    import kdray.runtime.session as session

    def boom(*a, **k):
        raise AssertionError("Ray was started before the bad input was rejected")

    monkeypatch.setattr(session, "ensure_ray", boom)


def test_bad_inputs_fail_before_ray(no_ray, tmp_path, synth_root):
    from kdray.runtime.driver import fit
    from kdray.runtime.tune import run_study
    from kdray.study import Row, Study

    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(DataNotFoundError) as e:
        fit(small_cfg(str(tmp_path / "nowhere"), **{"data.dataset": "cifar10"}), tracking_uri=uri)
    assert str(tmp_path / "nowhere") in str(e.value) and "download" in str(e.value)
    with pytest.raises(ConfigError, match="teacher_ckpt"):
        fit(small_cfg(synth_root, method="kd"), tracking_uri=uri)
    bad = tmp_path / "teacher.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ConfigError, match="does not fit"):
        fit(small_cfg(synth_root, method="kd", **{"model.teacher_ckpt": str(bad)}), tracking_uri=uri)
    with pytest.raises(ConfigError, match="model.arch"):
        fit(small_cfg(synth_root, **{"model.arch": "resnet_9000"}), tracking_uri=uri)
    with pytest.raises(ConfigError, match="init_from"):
        fit(small_cfg(synth_root, **{"train.init_from": str(tmp_path / "p1.pt")}), tracking_uri=uri)
    study = Study(name="bad", base=small_cfg(synth_root), metric="acc_5w1s",
                  rows=(Row("ok", {}), Row("typo", {"optim.lrate": 1.0})))
    with pytest.raises(ConfigError, match="lrate"):
        run_study(study, tracking_uri=uri)
    with pytest.raises(ConfigError, match="out of range"):
        run_study(Study(name="bad2", base=small_cfg(synth_root), metric="m",
                        rows=(Row("w", {"method_cfg.label_smoothing": 2.0}),)), tracking_uri=uri)


@pytest.mark.slow
def test_fit_ddp_fault_tolerance_and_mlflow_record(ray_session, tmp_path, synth_root):
    """2-worker gloo DDP run; a run whose worker is SIGKILLed mid-run finishes with the same
    final metrics; the MLflow run holds params, per-epoch metrics and every artifact."""
    import mlflow

    from kdray.runtime.driver import fit

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = str(tmp_path / "ray")
    cfg = small_cfg(synth_root, **{"resources.num_workers": 2})
    clean = fit(cfg, run_name="clean", storage_path=store, tracking_uri=uri)
    faulty = fit(cfg, run_name="faulty", storage_path=store, tracking_uri=uri,
                 epoch_hooks=[kill_once(epoch=2, rank=1, marker=str(tmp_path / "killed"))])
    assert (tmp_path / "killed").exists(), "the fault was not injected"
    assert clean.metrics["epoch"] == faulty.metrics["epoch"] == 3
    for k in ("train/loss", "test/acc_5w1s", "test/acc_5w1s_ci95"):
        assert faulty.metrics[k] == pytest.approx(clean.metrics[k], rel=1e-5, abs=1e-6), k

    client = mlflow.MlflowClient(uri)
    run = client.get_run(clean.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "conv2" and run.data.params["resources.num_workers"] == "2"
    hist = client.get_metric_history(run.info.run_id, "test/acc_5w1s")
    assert [m.step for m in hist] == [5, 10, 15]  # the global step at each epoch's end
    assert hist[-1].value == pytest.approx(clean.metrics["test/acc_5w1s"])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3  # epoch means
    assert len(client.get_metric_history(run.info.run_id, "train_step/loss")) >= 3  # steps
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    names = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    for need in ("config.json", "environment.json", "eval/episodes.parquet", "eval/summary.json",
                 "plots/curves.png", "plots/episode_hist.png", "checkpoint/checkpoint.pt"):
        assert need in names, (need, sorted(names))
    rows = pd.read_parquet(local / "eval/episodes.parquet")
    assert len(rows) == 30 and set(rows["way"]) == {5} and set(rows["shot"]) == {1}
    assert rows["accuracy"].mean() * 100 == pytest.approx(clean.metrics["test/acc_5w1s"], rel=1e-6)
    assert json.loads((local / "environment.json").read_text())["world_size"] == 2
    assert ExperimentConfig.from_dict(json.loads((local / "config.json").read_text())) == cfg
    assert (local / "plots/curves.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = torch.load(local / "checkpoint/checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and "student" in ckpt["model"]


def test_one_worker_fit_is_one_process_and_resumes_after_a_kill_or_an_error(
        ray_session, tmp_path, synth_root):
    """A one-worker fit runs as one Ray task (no Train controller): its checkpoints are
    `<run>/checkpoint_<epoch>/`; a task process killed at epoch 2 is restarted by Ray and an
    I/O error at epoch 1 is retried in the process, each from the last checkpoint, and both end
    with the uninterrupted run's metrics; the MLflow record counts the attempts."""
    import mlflow

    from kdray.runtime.driver import fit

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = tmp_path / "ray"
    cfg = small_cfg(synth_root, **{"train.keep_checkpoints": 2})
    clean = fit(cfg, run_name="clean", storage_path=str(store), tracking_uri=uri)
    killed = fit(cfg, run_name="killed", storage_path=str(store), tracking_uri=uri,
                 epoch_hooks=[kill_once(epoch=2, rank=0, marker=str(tmp_path / "killed"))])
    failed = fit(cfg, run_name="failed", storage_path=str(store), tracking_uri=uri,
                 epoch_hooks=[fail_once(epoch=1, marker=str(tmp_path / "failed"))])
    assert (tmp_path / "killed").exists() and (tmp_path / "failed").exists()
    assert sorted(p.name for p in (store / "clean").glob("checkpoint_*")) == [
        "checkpoint_000002", "checkpoint_000003"]   # keep_checkpoints=2
    assert clean.checkpoint_path == str(store / "clean" / "checkpoint_000003")
    client = mlflow.MlflowClient(uri)
    for res, attempts in ((clean, "1"), (killed, "2"), (failed, "2")):
        assert res.metrics["epoch"] == 3
        for k in ("train/loss", "test/acc_5w1s"):
            assert res.metrics[k] == pytest.approx(clean.metrics[k], rel=1e-5, abs=1e-6), k
        run = client.get_run(res.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.data.tags["kdray.attempts"] == attempts
        assert "kdray.error" not in run.data.tags   # dropped when the retry started
        assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [5, 10, 15]


@pytest.mark.slow
def test_study_failing_trial_interrupt_and_resume(tmp_path, synth_root):
    """A trial that fails at run time (batch larger than the data) fails alone; SIGINT mid-study then --resume re-runs no finished trial."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [sys.executable, str(REPO / "tests" / "study_script.py"), synth_root,
            "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
            "--results-dir", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = mlflow.MlflowClient(uri)
    deadline = time.time() + 300
    finished = []
    while time.time() < deadline and proc.poll() is None:
        time.sleep(2)
        try:
            finished = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                "tags.`kdray.status` = 'finished'")
        except Exception:
            finished = []
        if finished:
            break
    assert finished, "no trial finished within 300 s"
    proc.send_signal(signal.SIGINT)
    out1, _ = proc.communicate(timeout=180)
    first = {r.data.tags["kdray.run_key"]: r.info.run_id for r in finished}

    res = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`kdray.role` = 'trial'")
    by_label = {r.data.tags["kdray.row"]: r for r in runs}
    assert by_label["a"].data.tags["mlflow.runName"] == "a · s0"
    assert set(by_label) == {"a", "b", "oversized", "c"}, sorted(by_label)
    assert by_label["oversized"].info.status == "FAILED"
    for label in ("a", "b", "c"):
        assert by_label[label].info.status == "FINISHED", label
    for key, run_id in first.items():  # finished before the interrupt: never trained again
        epochs = client.get_metric_history(run_id, "epoch")
        assert [m.step for m in epochs] == [4, 8], (key, [m.step for m in epochs])
    table = (tmp_path / "results" / "tiny.md").read_text()
    from kdray.runtime.mlflow_store import study_table

    assert study_table("tiny", uri) == table  # `kdray report tiny` reads it back from MLflow
    assert "| oversized |" in table and "error" in table
    assert table.count("finished") == 3, table
    # Δ vs row a, paired per episode from the trials' MLflow eval/episodes.parquet (20 episodes)
    assert "| a | 1 |" in table and table.count("(20 episodes, 1 seed) |") == 2, table


@pytest.mark.slow
def test_two_raylet_cluster_runs_a_two_worker_fit(tmp_path, synth_root):
    """A 2-node Ray cluster on this machine (own process: one Ray connection per process) runs a
    2-worker DDP fit with one worker on each node."""
    import mlflow

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, str(REPO / "tests" / "two_node_fit.py"), synth_root,
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["metrics"]["epoch"] == 2 and len(out["alive_nodes"]) == 2
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    local = client.download_artifacts(out["run_id"], "environment.json", str(tmp_path / "dl"))
    env_info = json.loads(Path(local).read_text())
    assert env_info["world_size"] == 2
    assert sorted(env_info["node_ids"]) == sorted(out["alive_nodes"]), "workers shared a node"


def test_study_validation_applies_the_space_to_the_search_base_only(synth_root):
    """A row may switch method (CE row in a KD study); the KD-only search keys must not be
    applied to it, but a typo in the space must still fail before Ray."""
    from kdray.search import Float
    from kdray.study import Row, Study

    base = small_cfg(synth_root, method="kd")
    study = Study(name="v", base=base, metric="acc_5w1s",
                  rows=(Row("ce", {"method": "ce"}), Row("kd", {})),
                  space={"method_cfg.tau": Float(1.0, 8.0)})
    cfgs = study.validate()
    assert [c.method for c in cfgs] == ["ce", "kd", "kd", "kd", "kd", "kd"]
    assert {c.method_cfg.tau for c in cfgs[2:]} == {1.0, 8.0}
    # the space's corners on val (searched trials) and on the rows' split (the val-selected best)
    assert [c.eval.split for c in cfgs[2:]] == ["val", "val", "test", "test"]
    bad = Study(name="v", base=base, metric="m", rows=study.rows,
                space={"method_cfg.taux": Float(1.0, 8.0)})
    with pytest.raises(ConfigError, match="taux"):
        bad.validate()


def test_results_table_adds_per_setting_mean_sample_std_n_and_delta(tmp_path):
    """Every ablation row gets a line in a second table: n finished seeds, mean ± sample std
    (ddof=1), Δ vs the baseline (first row); searched trials and failed seeds are left out of
    it. With one seed there is one line per row too, with n = 1 and no std."""
    from kdray.study import Row, Study
    from kdray.study.table import write_results_md

    study = Study(name="s", base=ExperimentConfig(), metric="top1",
                  rows=(Row("CE", {}, "70.0"), Row("KD", {})), columns=(("top-1", "top1"),))

    def row(label, seed, top1, status="finished", params=None):
        return {"label": label, "seed": seed, "params": params or {}, "run_id": None,
                "metrics": {"top1": top1}, "status": status, "paper": "70.0" * (label == "CE"),
                "epochs": 1}

    rows = [row("CE", 0, 60.0), row("CE", 1, 62.0), row("CE", 2, 67.0),
            row("KD", 0, 63.0), row("KD", 1, 99.0, status="error"),
            row("search", 0, 90.0, params={"method_cfg.tau": 2.0})]
    text = write_results_md(study, rows, str(tmp_path / "s.md"), header={})
    summary = text.split("Per setting over its seeds that ran to the end")[1]
    # CE: mean 63, sample std sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13) = 3.61
    assert "| setting | n | top-1 | Δ top-1 [95% CI] | paper |" in summary
    assert "| CE | 3 | 63.00 ± 3.61 | baseline | 70.0 |" in summary
    assert "| KD | 1 | 63.00 | +3.00 (n too small: 1 seed) | – |" in summary
    assert "search" not in summary
    one_seed = write_results_md(study, rows[:1], str(tmp_path / "t.md"), header={})
    assert "| CE | 1 | 60.00 | baseline | 70.0 |" in one_seed


def test_stage_reuses_a_finished_run_and_never_resumes_a_different_config(tmp_path, monkeypatch):
    """run_stage: the same config is trained once and then reused; a changed config trains in a
    new run folder (Ray Train would otherwise resume the old config's checkpoints)."""
    import kdray.runtime.driver as driver
    from kdray.runtime.driver import RunResult, run_stage

    calls = []

    def fake_fit(cfg, *, run_name, storage_path, **kw):
        calls.append(run_name)
        ckpt = Path(storage_path) / run_name / "checkpoint_0"
        ckpt.mkdir(parents=True)
        (ckpt / "checkpoint.pt").write_bytes(b"x")
        return RunResult(metrics={"test/top1": 1.0}, history=[], mlflow_run_id=None,
                         checkpoint_path=str(ckpt))

    monkeypatch.setattr(driver, "fit", fake_fit)
    cfg = ExperimentConfig(method="ce")
    first = run_stage(cfg, "teacher", storage_path=str(tmp_path))
    again = run_stage(cfg, "teacher", storage_path=str(tmp_path))
    changed = run_stage(cfg.override({"train.epochs": 7}), "teacher", storage_path=str(tmp_path))
    assert len(calls) == 2 and calls[0] != calls[1] and all(c.startswith("teacher-") for c in calls)
    assert (first.reused, again.reused, changed.reused) == (False, True, False)
    assert again.checkpoint == first.checkpoint != changed.checkpoint


def test_release_placement_groups_removes_this_jobs_groups_only(ray_session):
    """The Ctrl-C release finds this job's groups by the job id their ids end with (no State API)
    and removes them, the created and the pending one; an id of another job is not listed."""
    import ray
    from ray.util import placement_group, placement_group_table

    from kdray.runtime.interrupts import job_placement_groups, release_placement_groups

    job = ray.get_runtime_context().get_job_id()
    made = placement_group([{"CPU": 1}], strategy="PACK")
    ray.get(made.ready(), timeout=60)
    pending = placement_group([{"CPU": 64}], strategy="PACK")  # never fits: stays PENDING
    ids = {made.id.hex(), pending.id.hex()}
    assert ids <= set(job_placement_groups(job)), (ids, placement_group_table())
    other = "ff" * 4 if job != "ff" * 4 else "fe" * 4
    assert not job_placement_groups(other)
    assert release_placement_groups(wait_s=10) == 0
    table = placement_group_table()
    assert all(table[k]["state"] == "REMOVED" for k in ids), {k: table[k]["state"] for k in ids}
