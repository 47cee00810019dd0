"""The search, kept and explained: the persisted Optuna study (fresh, resumed, archived), the
search report (figures, ASHA rung table, Spearman) and one short search end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdray.runtime import optuna_store as store
from kdray.runtime import search_report as sr

REPO = Path(__file__).resolve().parents[1]


def test_spearman_against_hand_computed_values_and_too_few():
    # no ties: ranks of y are 1,3,2,4; sum d^2 = 2; rho = 1 - 6*2 / (4*(16-1)) = 0.8
    rho, text = sr.spearman([1, 2, 3, 4], [10, 30, 20, 40])
    assert rho == pytest.approx(0.8) and "n=4" in text
    # a tie in y (7, 7 -> rank 3.5 each): rx - 3 = -2,-1,0,1,2; ry - 3 = -2,-1,.5,2,.5;
    # sxy = 8, sxx = 10, syy = 9.5 -> rho = 8 / sqrt(95)
    rho, _ = sr.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert rho == pytest.approx(8 / 95 ** 0.5)
    assert sr.spearman([3, 2, 1], [1, 2, 3])[0] == pytest.approx(-1.0)
    rho, text = sr.spearman([0.1, 0.2], [0.3, 0.4])
    assert rho is None and "too few finished trials" in text and "n=2" in text
    rho, text = sr.spearman([1, 2, 3], [5, 5, 5])
    assert rho is None and "constant" in text


def test_optuna_storage_url_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv(store.OPTUNA_STORAGE_ENV, raising=False)
    assert store.optuna_storage_url(f"sqlite:///{tmp_path}/m/mlflow.db") == \
        f"sqlite:///{tmp_path}/m/optuna.db"
    monkeypatch.chdir(tmp_path)
    assert store.optuna_storage_url("http://head:5000") == f"sqlite:///{tmp_path}/optuna.db"
    monkeypatch.setenv(store.OPTUNA_STORAGE_ENV, "postgresql://u:secret@db/optuna")
    assert store.optuna_storage_url("http://head:5000") == "postgresql://u:secret@db/optuna"
    assert "secret" not in store.redacted(store.optuna_storage_url(None))
    assert store.optuna_storage_url(None, "sqlite:///o.db") == f"sqlite:///{tmp_path}/o.db"
    assert store.optuna_storage_url(None, "none") is None
    assert sr.asha_rungs(1, 2, 2) == [1] and sr.asha_rungs(1, 2, 9) == [1, 2, 4, 8]


def test_optuna_study_resumed_or_archived(tmp_path):
    """--resume continues the stored study (counting its finished trials, failing the ones a
    dead driver left running); a fresh run archives it and starts empty."""
    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path}/optuna.db"
    st = optuna.create_study(study_name="s", storage=url, direction="maximize")
    st.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    st.ask()  # left RUNNING, as by a killed driver
    kw = dict(metric="m", mode="max", seed=0, num_samples=5, storage_url=url)
    setup = store.optuna_search("s", resume=True, **kw)
    assert (setup.num_samples, setup.earlier_trials) == (3, 2)
    states = [t.state for t in store.load_study(url, "s").trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert store.optuna_search("s", resume=True, tune_restores=True, **kw).num_samples == 5

    setup = store.optuna_search("s", resume=False, **kw)
    assert setup.num_samples == 5
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert "s" not in names
    (archive,) = names
    assert archive.startswith("s@") and len(store.load_study(url, archive).trials) == 3


def test_search_report_files_and_too_few_trials(tmp_path):
    """In-memory (random search) report: figures, rung table, the 'too few' sentences."""
    rec = {"name": "t0", "params": {"optim.lr": 0.01}, "status": "finished",
           "history": [(1, 20.0), (2, 30.0)], "config": {"train": {"epochs": 2}},
           "metrics": {"epoch": 2}, "run_id": "r0"}
    from ray import tune

    space = {"optim.lr": tune.loguniform(1e-4, 1e-1)}
    out = tmp_path / "rep"
    summary = sr.write_search_report([rec], out, study_name="x", metric="val/a", mode="max",
                                     space=space, grace_period=1, reduction_factor=2,
                                     max_epochs=2, storage_url=None)
    for f in ("optimization_history.png", "param_importances_fanova.png",
              "parallel_coordinate.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG", f
    assert summary["importances"] is None and "too few" in summary["importances_note"]
    assert summary["spearman_first_rung_vs_final"] is None and summary["spearman_n"] == 1
    text = (out / "trials.md").read_text()
    assert "| t0 | lr=0.01 | finished | – (ran all epochs) | 2 | 20 | 30 | `r0` |" in text
    assert "too few finished trials" in text and "ASHA rungs (epochs): 1." in text


@pytest.mark.slow
def test_search_persists_optuna_study_reports_and_resumes(tmp_path, synth_root):
    """A 3-trial TPE+ASHA search keeps its Optuna study in optuna.db beside mlflow.db and logs
    its figures and rung table to the parent run; a --resume without Tune's state (new storage
    path) continues the same Optuna study. (Tune's own restore of the pickled searcher:
    test_restored_searcher_reconnects_to_its_storage.)"""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = [sys.executable, str(REPO / "tests" / "search_script.py"), synth_root,
            "--tracking-uri", uri, "--results-dir", str(tmp_path / "results")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(store.OPTUNA_STORAGE_ENV, None)

    def run(*extra):
        res = subprocess.run([*base, *extra], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=1500)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "search report failed" not in res.stderr, res.stderr[-3000:]
        return res

    run("--storage-path", str(tmp_path / "ray"))
    ourl = f"sqlite:///{tmp_path}/optuna.db"
    trials = optuna.load_study(study_name="tiny_search", storage=ourl).trials
    assert len(trials) == 3
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny_search")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`kdray.role` = 'study'")
    assert parent.data.tags["kdray.optuna_study"] == "tiny_search"
    assert parent.data.tags["kdray.optuna_storage"] == ourl
    local = Path(client.download_artifacts(parent.info.run_id, "search", str(tmp_path / "dl")))
    for f in ("optimization_history.png", "param_importances_fanova.png",
              "parallel_coordinate.png"):
        assert (local / f).read_bytes()[:4] == b"\x89PNG", f
        assert (tmp_path / "results" / "tiny_search_search" / f).is_file(), f
    summary = json.loads((local / "summary.json").read_text())
    assert summary["optuna_trials"] == 3 and summary["asha_rungs"] == [1]
    assert summary["importance_evaluator"].startswith("Fanova")
    rows = summary["trials"]
    assert len(rows) == 3
    for r in rows:  # where ASHA stopped each trial, from Tune's per-epoch results
        assert r["max_epochs"] == 2 and r["first_rung"] is not None and r["run_id"], r
        if r["status"] == "stopped":
            assert r["last_epoch"] == 1 and r["final"] == r["first_rung"], r
        else:
            assert r["status"] == "finished" and r["last_epoch"] == 2, r
    finished = [r for r in rows if r["status"] == "finished"]
    assert summary["spearman_n"] == len(finished)
    if len(finished) < 3:
        assert "too few" in summary["spearman_note"]
    table = (local / "trials.md").read_text()
    assert sum(r["name"] in table for r in rows) == 3
    assert "stopped at epoch (ASHA rung)" in table
    assert "search report" in (tmp_path / "results" / "tiny_search.md").read_text()

    def trial_runs(phase="/search/"):
        runs = client.search_runs([exp.experiment_id], "tags.`kdray.role` = 'trial'")
        return [r for r in runs if phase in r.data.tags.get("kdray.run_key", "")]

    assert len(trial_runs()) == 3
    assert len(trial_runs("/best/")) == 1  # the val-selected point, re-run on the rows' split
    # Tune's state gone (new storage path): the Optuna study goes on with the missing sample
    run("--storage-path", str(tmp_path / "ray2"), "--resume", "--num-samples", "4")
    again = optuna.load_study(study_name="tiny_search", storage=ourl).trials
    assert [t.number for t in again] == [0, 1, 2, 3]
    assert [t.params for t in again[:3]] == [t.params for t in trials]
    assert again[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(trial_runs()) == 4


def test_restored_searcher_reconnects_to_its_storage(tmp_path):
    """Tune pickles the OptunaSearch into its experiment state (searcher.save) and Tuner.restore
    unpickles it (searcher.restore): the restored searcher must write to the same stored study."""
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    url = f"sqlite:///{tmp_path}/optuna.db"
    setup = store.optuna_search("s", metric="m", mode="max", seed=0, num_samples=2,
                             storage_url=url, resume=False)
    s = setup.searcher
    s.set_search_properties("m", "max", {"x": tune.uniform(0, 1)})
    s.suggest("a")
    s.on_trial_complete("a", {"m": 0.5, "training_iteration": 1})
    s.suggest("b")  # in flight when the driver stops
    s.save(str(tmp_path / "searcher.pkl"))

    restored = OptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("b", {"m": 0.7, "training_iteration": 1})
    restored.suggest("c")
    restored.on_trial_complete("c", {"m": 0.1, "training_iteration": 1})
    trials = store.load_study(url, "s").trials
    assert [t.value for t in trials] == [0.5, 0.7, 0.1]
    assert {t.state for t in trials} == {TrialState.COMPLETE}
