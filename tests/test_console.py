"""kdray's study console: a recorded sequence of Tune events gives the expected lines (no Ray),
and a quiet console keeps Ray's output in its log file, off the terminal."""

from __future__ import annotations

import io
import logging
import os
import sys

from kdray.config import ExperimentConfig
from kdray.search import Float
from kdray.study import Row, Study
from kdray.study.progress import Progress, console_table, duration, run_name


def _study() -> Study:
    base = ExperimentConfig(method="ce").override({"train.epochs": 2})
    return Study(name="s_smoke", base=base, metric="acc_5w1s",
                 rows=(Row("phase 1 only"), Row("+ supervised [CLS] (Eq. 3)")),
                 space={"method_cfg.w_patch": Float(0.1, 2.0)}, num_samples=2)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_run_names():
    assert run_name("grid", {"row": "+ supervised [CLS] (Eq. 3)", "seed": 0}, 1) == \
        "+ supervised [CLS] (Eq. 3) · s0"
    assert run_name("search", {"method_cfg.w_patch": 1.0981, "method_cfg.teacher_temp": 0.06146},
                    3) == "search 03 · w_patch=1.1 teacher_temp=0.0615"
    assert run_name("best", {"method_cfg.w_patch": 1.1, "seed": 2}, 0) == \
        "best searched (val-selected) · s2"
    assert run_name("stage", {"name": "phase 1"}) == "stage · phase 1"
    assert duration(42) == "42s" and duration(185) == "3m05s" and duration(3720) == "1h02m"


def test_recorded_events_give_the_expected_lines():
    clock = Clock()
    p = Progress(_study(), clock=clock, every=30)
    out: list[str] = []
    clock.t = 60
    out += p.stage("s_smoke-phase1", reused=False)
    a, b = "+ supervised [CLS] (Eq. 3) · s0", "phase 1 only · s0"
    out += p.start("g0", "grid", b) + p.start("g1", "grid", a)
    clock.t = 70
    out += p.result("g0", "grid", b, {"epoch": 1, "train/loss": 5.4123})
    clock.t = 75
    out += p.tick()  # printed 5 s ago: nothing
    clock.t = 80
    out += p.result("g0", "grid", b, {"epoch": 2, "train/loss": 5.1, "test/acc_5w1s": 29.59,
                                       "test/acc_5w1s_ci95": 1.04})
    out += p.complete("g0", "grid", b)
    clock.t = 115
    out += p.tick()  # 35 s of silence, but nothing moved but the clock: not yet
    clock.t = 150
    out += p.tick()
    clock.t = 160
    out += p.result("g1", "grid", a, {"epoch": 1, "train/loss": 4.0})
    out += p.result("g1", "grid", a, {"epoch": 2, "train/loss": 4.0, "test/acc_5w1s": 33.77,
                                       "test/acc_5w1s_ci95": 1.26})
    out += p.complete("g1", "grid", a)
    s = "search 00 · w_patch=1.1"
    out += p.start("x", "search", s)
    clock.t = 185
    out += p.result("x", "search", s, {"epoch": 1, "train/loss": 3.0, "val/acc_5w1s": 27.5,
                                        "val/acc_5w1s_ci95": 0.9})
    out += p.complete("x", "search", s)
    out += p.complete("y", "search", "search 01 · w_patch=0.2", error="RuntimeError('boom')")
    out += p.start("z", "best", "best searched (val-selected) · s0")
    clock.t = 300
    out += p.tick()  # 115 s; a trial started, but a start that reported nothing is no move
    clock.t = 310
    out += p.tick()  # 4 x 30 s of silence: the study line again
    assert out == [
        "[kdray] stage s_smoke-phase1 ✓ (trained in 1m00s)",
        "grid   phase 1 only · s0  epoch 1/2  loss 5.412  test/acc_5w1s –  10.0 s incl. start-up",
        "grid   phase 1 only · s0  epoch 2/2  loss 5.1  test/acc_5w1s 29.59 ± 1.04  10.0 s/epoch",
        "study  stages 1 ✓ · grid 1/2 · search 0/2 · best 0/1 · running 1 · 1m20s elapsed · "
        "ETA ~40s · best val/acc_5w1s –",
        "grid   + supervised [CLS] (Eq. 3) · s0  epoch 1/2  loss 4  test/acc_5w1s –  "
        "100.0 s incl. start-up",
        "grid   + supervised [CLS] (Eq. 3) · s0  epoch 2/2  loss 4  test/acc_5w1s 33.77 ± 1.26  "
        "0.0 s/epoch",
        "study  stages 1 ✓ · grid 2/2 · search 0/2 · best 0/1 · running 0 · 2m40s elapsed · "
        "ETA ~1m30s · best val/acc_5w1s –",
        "search 00 · w_patch=1.1  epoch 1/2  loss 3  val/acc_5w1s 27.50 ± 0.90  "
        "25.0 s incl. start-up",
        "search 00 · w_patch=1.1  stopped at epoch 1/2 (ASHA)",
        "study  stages 1 ✓ · grid 2/2 · search 1/2 · best 0/1 · running 0 · 3m05s elapsed · "
        "ETA ~50s · best val/acc_5w1s 27.50 (search 00 · w_patch=1.1)",
        "search 01 · w_patch=0.2  ✗ failed: RuntimeError('boom')",
        # one trial left (best): it runs alone, start-up 45 s + 1 epoch of 5 s
        "study  stages 1 ✓ · grid 2/2 · search 2/2 · best 0/1 · running 0 · 3m05s elapsed · "
        "ETA ~50s · best val/acc_5w1s 27.50 (search 00 · w_patch=1.1)",
        "study  stages 1 ✓ · grid 2/2 · search 2/2 · best 0/1 · running 1 · 5m10s elapsed · "
        "ETA ~50s · best val/acc_5w1s 27.50 (search 00 · w_patch=1.1)",
    ]


def test_console_table_drops_the_header():
    md = "# s\n\ndescription\n\n- study: s\n- wall time: 3 s\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert console_table(md) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_quiet_console_keeps_ray_output_in_its_log(tmp_path):
    """While a quiet console is active, stdout/stderr (also written to the file descriptors
    directly, as Ray's C++ code does) go to the log; `[kdray]` lines, kdray warnings and the
    console's own lines reach the terminal."""
    from kdray.runtime.console import StudyConsole, emit, tune_verbose

    term = io.StringIO()
    log = tmp_path / "s" / "console.log"
    with StudyConsole(_study(), str(log), stream=term) as c:
        assert tune_verbose() == 0
        print("╭── Tune status table ──╮")
        print("(RayTrainWorker pid=1) [kdray] epoch 1")
        print("[kdray] stage phase1: training")
        os.write(2, b"core_worker.cc:123: PreemptionWatcher\n")
        sys.stderr.write("ray warning\n")
        logging.getLogger("kdray.runtime.x").warning("search report failed")
        logging.getLogger("ray.tune").info("ray info")
        c.write("grid   a · s0  epoch 1/2")
        emit("| table |")
    assert tune_verbose() == 1
    assert term.getvalue().splitlines() == [
        "[kdray] stage phase1: training", "[kdray] warning: search report failed",
        "grid   a · s0  epoch 1/2", "| table |"]
    text = log.read_text()
    for s in ("Tune status table", "(RayTrainWorker pid=1)", "PreemptionWatcher", "ray warning"):
        assert s in text


def test_stage_epochs_reach_the_terminal_once_per_epoch(tmp_path):
    """While a stage trains, its workers' forwarded epoch lines (Ray's coloured prefix, every rank)
    become one line per epoch on the terminal; outside a stage they stay in the log only."""
    from kdray.runtime.console import StudyConsole, stage_lines

    line = ("\x1b[36m(RayTrainWorker pid={})\x1b[0m epoch {}/4 train/ce=1.245 train/loss=1.245 "
            "train/lr=0.001007 test/top1=61.25 test/acc_5w1s=40.1 test/acc_5w1s_proto=40.1 "
            "perf/epoch_s=143.1 perf/step_s=0.3816")
    term = io.StringIO()
    with StudyConsole(_study(), str(tmp_path / "console.log"), stream=term):
        print(line.format(7, 1))  # before the stage: log only
        with stage_lines("teacher"):
            print(line.format(7, 2))
            print(line.format(8, 2))  # rank 1's copy of the same epoch
            sys.stderr.write(line.format(8, 3) + "\n")
        print(line.format(7, 4))
    assert term.getvalue().splitlines() == [
        "stage  teacher  epoch 2/4  loss 1.245  test/top1 61.25  test/acc_5w1s 40.1  143 s/epoch",
        "stage  teacher  epoch 3/4  loss 1.245  test/top1 61.25  test/acc_5w1s 40.1  143 s/epoch"]


def test_a_row_with_its_own_length_shows_its_own_epoch_total():
    """A row overriding train.epochs (e.g. SMKD mini's CE row) counts to its own length, and is
    not called stopped when it ends at it; the other rows keep the base length."""
    base = ExperimentConfig(method="ce").override({"train.epochs": 2})
    study = Study(name="len", base=base, metric="acc_5w1s",
                  rows=(Row("short"), Row("long", {"train.epochs": 6})))
    p = Progress(study, clock=Clock())
    long_ = {"row": "long", "seed": 0}
    assert "epoch 6/6" in p.result("t1", "grid", "long · s0", {"epoch": 6}, long_)[0]
    assert not any("stopped" in x for x in p.complete("t1", "grid", "long · s0", params=long_))
    assert "epoch 1/2" in p.result("t2", "grid", "short · s0", {"epoch": 1},
                                   {"row": "short", "seed": 0})[0]
    assert "stopped at epoch 1/2" in p.complete("t2", "grid", "short · s0")[0]


def test_a_phase_restored_after_it_ended_counts_as_done():
    """`--resume` restores a grid that was already over: Tune sends no event, the study line
    still counts its trials done (it said `grid 0/2` before)."""
    p = Progress(_study(), clock=Clock())
    lines = p.settle("grid", [("g0", "phase 1 only · s0"), ("g1", "+ supervised · s0")])
    assert lines and "grid 2/2" in lines[0] and "running 0" in lines[0], lines
    assert p.settle("grid", [("g0", "phase 1 only · s0")]) == []  # nothing new: no line


def test_live_view_keeps_the_study_line_at_the_bottom(tmp_path):
    """On a terminal (forced here) the study line is a rich live status: trial lines and
    `[kdray]` lines print above it, and the last study line stays once the study ends."""
    import re

    from kdray.runtime.console import StudyConsole

    term = io.StringIO()
    with StudyConsole(_study(), str(tmp_path / "console.log"), stream=term, live=True) as c:
        c.write("study  grid 0/2 · running 1")
        c.write("grid   a · s0  epoch 1/2  loss 3")
        print("[kdray] stage s: training")
        print("ray noise")
        c.write("study  grid 1/2 · running 1")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue())  # rich's cursor control
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines() if x.strip()]
    assert "grid   a · s0  epoch 1/2  loss 3" in lines and "[kdray] stage s: training" in lines
    assert "ray noise" not in text
    assert lines[-1] == "study  grid 1/2 · running 1"
    assert "ray noise" in (tmp_path / "console.log").read_text()
