"""Failures and interrupts of a study (kdray/runtime/interrupts.py), each through a subprocess
study (tests/interrupt_script.py, its own Ray): a NaN trial fails once, without a retry, with its
error in MLflow and in the table; Ctrl-C stops the whole study with final records; a SIGKILLed
driver's `--resume` leaves no MLflow run RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from local_cluster import _snapshot

from kdray.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "interrupt_script.py"


def _args(tmp: Path, root: str, nan_ckpt: str = "-") -> list[str]:
    return [sys.executable, str(SCRIPT), root, nan_ckpt, "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db", "--storage-path", str(tmp / "ray"),
            "--results-dir", str(tmp / "results")]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Study:
    """One study subprocess in its own session, output to a file; `stop()` ends what is left of
    that session's processes (by PID, after checking they belong to it)."""

    def __init__(self, args: list[str], tmp: Path, tag: str, env: dict | None = None) -> None:
        self.log = tmp / f"{tag}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        with open(self.log, "w") as out:
            # Ctrl-C at a terminal reaches a process whose SIGINT is the default; a suite run
            # from a background shell (`pytest &`) would hand its ignored SIGINT down instead
            self.proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_default_sigint)
        self.known: dict[int, int] = {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def remember(self) -> None:
        self.known.update(_snapshot((self.proc.pid,), self.known))

    def stop(self) -> None:
        for _ in range(50):
            live = _snapshot((self.proc.pid,), self.known)
            if not live:
                return
            for pid in live:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


def _client(tmp: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def _runs(tmp: Path):
    client = _client(tmp)
    exp = client.get_experiment_by_name("intr")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=500)


def _wait(study: Study, pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert study.proc.poll() is None, f"study ended before {what}:\n{study.output()[-3000:]}"
        study.remember()
        try:
            got = pred()
        except Exception:  # the store is being created
            got = None
        if got:
            return got
        time.sleep(1.0)
    raise AssertionError(f"no {what} within {timeout} s:\n{study.output()[-3000:]}")


def _finish(study: Study, timeout: float) -> int:
    try:
        return study.proc.wait(timeout=timeout)
    finally:
        study.stop()


def _trial_runs(tmp: Path) -> dict[str, object]:
    return {r.data.tags["kdray.run_key"]: r for r in _runs(tmp)
            if r.data.tags.get("kdray.role") == "trial"}


def _nan_checkpoint(root: str, path: Path) -> str:
    """A kdray checkpoint of the study's model whose weights are all NaN."""
    from kdray.data.registry import num_train_classes
    from kdray.methods import build_method

    cfg = ExperimentConfig(method="ce").override({
        "data.root": root, "model.arch": "conv2", "data.synthetic_classes": 30,
        "data.synthetic_per_class": 20})
    state = build_method(cfg, num_train_classes(cfg)).checkpoint_state()
    for sd in state.values():
        for t in sd.values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    torch.save({"model": state}, path)
    return str(path)


@pytest.mark.slow
def test_nan_trial_fails_once_with_its_error_in_mlflow_and_the_table(tmp_path, synth_root):
    """The `nan` row starts from NaN weights: NonFiniteLossError in the first step. Ray Train does
    not retry it (resources.max_failures is 2): one worker attempt, the run FAILED with tag
    kdray.error and error.txt; the table says error with the reason."""
    ckpt = _nan_checkpoint(synth_root, tmp_path / "nan.pt")
    study = Study([*_args(tmp_path, synth_root, ckpt), "--no-search"], tmp_path, "nan")
    rc = _finish(study, 600)
    assert rc == 0, study.output()[-4000:]
    by_row = {r.data.tags["kdray.row"]: r for r in _trial_runs(tmp_path).values()}
    assert set(by_row) == {"nan"}, sorted(by_row)
    bad = by_row["nan"]
    assert bad.info.status == "FAILED"
    assert bad.data.tags["kdray.status"] == "failed"
    assert bad.data.tags["kdray.error"].startswith("NonFiniteLossError: non-finite loss"), bad.data.tags
    assert bad.data.tags["kdray.attempts"] == "1", "the deterministic error was retried"
    text = Path(_client(tmp_path).download_artifacts(bad.info.run_id, "error.txt",
                                                     str(tmp_path / "dl"))).read_text()
    assert text.startswith("NonFiniteLossError: non-finite loss") and "Traceback" in text
    assert "retried by Ray Train: no" in text
    table = (tmp_path / "results" / "intr.md").read_text()
    assert "| error [1] |" in table, table
    assert "1. nan, seed 0: NonFiniteLossError: non-finite loss" in table, table
    assert not [r for r in _runs(tmp_path) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_ctrl_c_stops_the_whole_study_and_resume_after_sigkill_leaves_nothing_running(
        tmp_path, synth_root):
    """1. Ctrl-C (SIGINT to the study's process group) once a grid trial has finished: the study
    exits 130 without starting its search; no MLflow run is RUNNING, the parent is KILLED and
    tagged interrupted, the table says interrupted, no placement group is left.
    2. `--resume`, SIGKILLed once a searched trial has a run: runs are left RUNNING.
    3. `--resume` again: exit 0, no run RUNNING, the parent FINISHED, the trials that had finished
    before the interrupt not trained again, ASHA-stopped trials FINISHED with kdray.stopped."""
    args = _args(tmp_path, synth_root)
    first = Study(args, tmp_path, "first")

    def finished():
        return [r for r in _trial_runs(tmp_path).values()
                if r.data.tags.get("kdray.status") == "finished"]

    done = _wait(first, finished, 400, "finished grid trial")
    os.killpg(first.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    rc = _finish(first, 240)
    out = first.output()
    assert rc == 130, out[-4000:]
    assert "placement groups of this study: 0 left" in out, out[-4000:]
    runs = _runs(tmp_path)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"], \
        [(r.data.tags.get("mlflow.runName"), r.info.status) for r in runs]
    parent = next(r for r in runs if r.data.tags.get("kdray.role") == "study")
    assert parent.info.status == "KILLED" and parent.data.tags["kdray.status"] == "interrupted"
    trials = _trial_runs(tmp_path)
    assert not [k for k in trials if "/search/" in k or "/best/" in k], sorted(trials)
    assert not (tmp_path / "ray" / "intr-search").exists(), "the search phase started"
    table = (tmp_path / "results" / "intr.md").read_text()
    assert "**interrupted**" in table and "| interrupted |" in table, table
    killed = [r for r in trials.values() if r.info.status == "KILLED"]
    assert all(r.data.tags["kdray.status"] == "interrupted" for r in killed)
    done_keys = {r.data.tags["kdray.run_key"]: r.info.run_id for r in done}

    second = Study([*args, "--resume"], tmp_path, "second")
    _wait(second, lambda: [k for k in _trial_runs(tmp_path) if "/search/" in k], 500,
          "searched trial run")
    second.remember()
    os.kill(second.proc.pid, signal.SIGKILL)
    _finish(second, 60)
    assert [r for r in _runs(tmp_path) if r.info.status == "RUNNING"], "nothing left RUNNING"

    third = Study([*args, "--resume"], tmp_path, "third")
    rc = _finish(third, 900)
    assert rc == 0, third.output()[-4000:]
    # kdray's console, not Ray's: a whole (tiny) study's output within the 60-line budget
    console = third.output().splitlines()
    assert len(console) <= 60 and "val/acc_5w1s" in third.output(), "\n".join(console)
    assert not [x for x in console if "RayTrainWorker" in x or "TrainingReport" in x]
    runs = _runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"], \
        [(r.data.tags.get("mlflow.runName"), r.info.status) for r in runs]
    parent = next(r for r in runs if r.data.tags.get("kdray.role") == "study")
    assert parent.info.status == "FINISHED" and parent.data.tags["kdray.status"] == "finished"
    trials = _trial_runs(tmp_path)
    assert sum("/grid/" in k for k in trials) == 3 and sum("/search/" in k for k in trials) == 2
    client = _client(tmp_path)
    for key, run_id in done_keys.items():  # finished before Ctrl-C: never trained again
        hist = client.get_metric_history(run_id, "epoch")  # logged at the global step
        assert [m.value for m in hist] == [1, 2], (key, [(m.step, m.value) for m in hist])
    for r in trials.values():
        if r.data.tags.get("kdray.status") == "stopped":
            assert r.info.status == "FINISHED" and r.data.tags["kdray.stopped"] == "asha"
    table = (tmp_path / "results" / "intr.md").read_text()
    assert "interrupted" not in table, table
    assert table.count("| finished |") + table.count("| stopped |") == 3 + 2 + 1, table


def test_which_errors_are_deterministic_and_their_reasons():
    """Ray-free: the worker's classification and the one-line reasons."""
    from ray.exceptions import ActorDiedError

    from kdray.checks import ConfigError
    from kdray.engine.loop import NonFiniteLossError
    from kdray.runtime.failures import DeterministicError, is_deterministic, reason

    yes = [NonFiniteLossError("non-finite loss at epoch 0"), ConfigError("data.batch_size"),
           ValueError("bad"), KeyError("x"), RuntimeError("mat1 and mat2 shapes cannot be "
                                                          "multiplied (32x10 and 64x5)")]
    no = [ActorDiedError(), OSError("disk"), RuntimeError("Gloo connection reset by peer"),
          RuntimeError("something"), MemoryError()]
    assert all(is_deterministic(e) for e in yes), [e for e in yes if not is_deterministic(e)]
    assert not any(is_deterministic(e) for e in no), [e for e in no if is_deterministic(e)]
    assert reason(ValueError("a\n  b")) == "ValueError: a"
    wrapped = DeterministicError("NonFiniteLossError", "non-finite loss", "tb")
    assert reason(wrapped) == "NonFiniteLossError: non-finite loss"
    assert len(reason(ValueError("x" * 1000))) == 300


def test_close_runs_ends_every_running_run_by_its_trial_status(tmp_path):
    """Ray-free: finished -> FINISHED, ASHA-stopped -> FINISHED + kdray.stopped=asha, error ->
    FAILED + kdray.error + error.txt, interrupted or unclaimed -> KILLED; a closed run is left
    alone; the parent ends KILLED/interrupted."""
    import mlflow

    from kdray.runtime.interrupts import StudyGuard, close_runs, end_parent

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.create_experiment("s", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id
    trials, ids = [], {}
    for status in ("finished", "stopped", "error", "interrupted", "orphan", "closed"):
        key = f"s/grid/{status}"
        ids[status] = client.create_run(exp, tags={"mlflow.parentRunId": parent,
                                                   "kdray.run_key": key}).info.run_id
        if status != "orphan":
            trials.append({"run_key": key, "status": status, "trial_id": status,
                           "error": "NonFiniteLossError: nan" if status == "error" else None})
    client.set_terminated(ids["closed"], "FAILED")
    closed = close_runs(client, exp, parent, trials)
    assert closed == {ids["finished"]: "FINISHED", ids["stopped"]: "FINISHED",
                      ids["error"]: "FAILED", ids["interrupted"]: "KILLED",
                      ids["orphan"]: "KILLED"}
    tags = {k: client.get_run(i).data.tags for k, i in ids.items()}
    assert tags["stopped"]["kdray.stopped"] == "asha" and tags["stopped"]["kdray.status"] == "stopped"
    assert tags["error"]["kdray.error"] == "NonFiniteLossError: nan"
    assert [a.path for a in client.list_artifacts(ids["error"])] == ["error.txt"]
    assert tags["interrupted"]["kdray.status"] == tags["orphan"]["kdray.status"] == "interrupted"
    assert client.get_run(ids["closed"]).info.status == "FAILED"
    end_parent(client, parent, interrupted=True)
    p = client.get_run(parent)
    assert p.info.status == "KILLED" and p.data.tags["kdray.status"] == "interrupted"

    class T:  # a Tune trial as the guard sees it
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    guard = StudyGuard()
    guard.start_phase("grid")
    guard._trials = [T("t1", "TERMINATED"), T("t2", "RUNNING"), T("t3", "PENDING")]
    guard._mark()
    recs = [{"trial_id": t, "status": s} for t, s in
            (("t1", "finished"), ("t2", "stopped"), ("t3", "stopped"))]
    assert guard.interrupted and guard.mark_records(recs) == 2
    assert [r["status"] for r in recs] == ["finished", "interrupted", "interrupted"]


def test_results_table_numbers_errors_and_explains_statuses(tmp_path):
    """Ray-free: `error [n]` in the status column, the reason listed under the table."""
    from kdray.study import Row, Study
    from kdray.study.table import write_results_md

    study = Study(name="s", base=ExperimentConfig(), metric="top1",
                  rows=(Row("A", {}), Row("B", {})), columns=(("top-1", "top1"),))
    rows = [{"label": "A", "seed": 0, "params": {}, "run_id": None, "metrics": {"top1": 1.0},
             "status": "interrupted", "paper": "", "epochs": 1},
            {"label": "B", "seed": 0, "params": {}, "run_id": None, "metrics": {},
             "status": "error", "error": "NonFiniteLossError: nan", "paper": "", "epochs": None}]
    text = write_results_md(study, rows, str(tmp_path / "s.md"), header={})
    assert "| error [1] |" in text and "| interrupted |" in text
    assert "1. B, seed 0: NonFiniteLossError: nan" in text
    assert "interrupted: stopped by Ctrl-C" in text


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_ctrl_c_in_a_stage_stops_the_study_with_final_records(tmp_path, synth_root, how):
    """Ctrl-C while the study's first stage trains (its epochs shown on the terminal): the stage's
    workers stop, its MLflow run is KILLED and tagged interrupted, the parent too, no trial
    starts, exit 130 with one line saying so; no traceback. A SIGTERM to the driver alone (`kill`,
    a scheduler, `timeout`) does the same (before, Ray's own SIGTERM handler exited at once and
    left every record RUNNING)."""
    study = Study(_args(tmp_path, synth_root), tmp_path, "stage", {"KDRAY_TEST_STAGE": "1"})
    _wait(study, lambda: "stage  teach  epoch 2/40" in study.output(), 400, "stage epoch line")
    if how == "ctrl_c":
        os.killpg(study.proc.pid, signal.SIGINT)
    else:
        os.kill(study.proc.pid, signal.SIGTERM)
    rc = _finish(study, 180)
    out = study.output()
    assert rc == 130, out[-4000:]
    assert "Ctrl-C: stopping this training run" in out, out[-4000:]
    assert "interrupted: study interrupted in its stage 'teach' phase" in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    runs = _runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"], \
        [(r.data.tags.get("mlflow.runName"), r.info.status) for r in runs]
    parent = next(r for r in runs if r.data.tags.get("kdray.role") == "study")
    assert parent.info.status == "KILLED" and parent.data.tags["kdray.status"] == "interrupted"
    stage = [r for r in runs if r.data.tags.get("kdray.phase") == "stage"]
    assert len(stage) == 1 and stage[0].info.status == "KILLED", stage
    assert stage[0].data.tags["kdray.status"] == "interrupted"
    assert {r.data.tags.get("kdray.phase") for r in _trial_runs(tmp_path).values()} == {"stage"}


def test_sigterm_goes_where_sigint_goes():
    """`stop_on_sigterm`: inside a study's guard a SIGTERM marks the study interrupted like a first
    Ctrl-C; with Python's default SIGINT handler, or SIGINT ignored (a job started with `&`), it
    raises KeyboardInterrupt, which `fit` and the study script treat as Ctrl-C."""
    from kdray.runtime.interrupts import StudyGuard
    from kdray.runtime.session import stop_on_sigterm

    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        stop_on_sigterm()
        with StudyGuard() as guard:
            signal.raise_signal(signal.SIGTERM)
            assert guard.interrupted
        for sigint in (signal.default_int_handler, signal.SIG_IGN):
            signal.signal(signal.SIGINT, sigint)
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
