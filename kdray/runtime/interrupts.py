"""Interrupts: Ctrl-C on a run and on a study, and the MLflow runs a study leaves behind.

* **Interrupts.** `StudyGuard` turns the first Ctrl-C on a study into "stop everything after
  the records are final": Tune's own SIGINT handling stops the running phase (and saves its state
  for `--resume`), the trials running at that moment are marked `interrupted`, no later phase
  starts, leftover placement groups are removed, `close_runs` ends every MLflow run of the study,
  the parent run ends KILLED (tag `kdray.status=interrupted`). A second Ctrl-C exits at once.
  A DDP run's trainer (`trainer_class`) replaces Ray Train's SIGINT handler with one that aborts
  the run's controller.
* **Closing runs.** `close_runs` ends every trial run of a study parent that is still RUNNING:
  finished -> FINISHED, ASHA-stopped -> FINISHED with `kdray.stopped=asha`, error -> FAILED with
  the error, interrupted or unknown -> KILLED. Run at the end of every study, resumed or not.

Which worker errors are retried, and how a failure is recorded: `kdray.runtime.failures`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from kdray.runtime.failures import (
    ERROR_ARTIFACT,
    TAG_ERROR,
    TAG_STATUS,
    TAG_STOPPED,
    failure_policy_class,
    reason,
)

log = logging.getLogger(__name__)

INTERRUPTED_EXIT = 130           # the shell's code for a process ended by SIGINT


def trainer_class():
    """TorchTrainer whose controller uses the failure policy above (the only change)."""
    from ray.train.torch import TorchTrainer

    policy = failure_policy_class()

    class Trainer(TorchTrainer):
        def _initialize_and_run_controller(self, **kwargs):
            kwargs["failure_policy"] = policy(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**kwargs)

        def _register_sigint_handler(self, controller):
            signal.signal(signal.SIGINT, _train_sigint_handler(controller))

    return Trainer


# ---------------------------------------------------------------------------- Ctrl-C on one run
_TRAIN_SIGINT = threading.Event()  # set by the first Ctrl-C during a main-thread Train run


class RunInterrupted(KeyboardInterrupt):
    """Raised by `kdray.runtime.driver.fit` after Ctrl-C stopped its run and closed its record."""


def _train_sigint_handler(controller):
    """A main-thread Train run's SIGINT handler (a study's stage, `kdray train`; Tune trials run
    in threads and never get one): the first Ctrl-C aborts the run's controller, which stops the
    workers and keeps the last checkpoint, so the same command resumes it; a second exits now."""

    def handler(signum, frame):
        if _TRAIN_SIGINT.is_set():
            _exit_now()
        _TRAIN_SIGINT.set()
        print("\n[kdray] Ctrl-C: stopping this training run; its last checkpoint is kept and "
              "the same command continues it. Press Ctrl-C again to exit at once.",
              file=sys.stderr, flush=True)
        import ray

        try:
            ray.get(controller.abort.remote())
        except Exception as e:  # the controller already gone: the run has stopped anyway
            log.info("abort: %s", e)

    return handler


def train_interrupted(reset: bool = False) -> bool:
    """Did Ctrl-C stop the last main-thread Train run? `reset`: clear it (before a run)."""
    was = _TRAIN_SIGINT.is_set()
    if reset:
        _TRAIN_SIGINT.clear()
    return was


def run_interrupted(client, experiment_id: str, run_key: str, run_name: str) -> RunInterrupted:
    """After Ctrl-C stopped run `run_name` (its workers or its task): close its MLflow record
    (`close_interrupted_run`) and return the `RunInterrupted` for `fit` to raise."""
    closed = close_interrupted_run(client, experiment_id, run_key)
    return RunInterrupted(f"run {run_name!r} stopped by Ctrl-C (MLflow run "
                          f"{', '.join(closed) or 'not started'} marked interrupted); the same "
                          "command continues it from its last checkpoint")


def close_interrupted_run(client, experiment_id: str, run_key: str) -> list[str]:
    """End the MLflow runs with tag `kdray.run_key` = `run_key` still RUNNING as KILLED, tagged
    `kdray.status=interrupted`; returns their ids."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`kdray.run_key` = '{run_key}' and attributes.status = 'RUNNING'"))
    for r in runs:
        client.set_tag(r.info.run_id, TAG_STATUS, "interrupted")
        client.set_terminated(r.info.run_id, "KILLED")
    return [r.info.run_id for r in runs]


# ---------------------------------------------------------------------------- Ctrl-C on a study
_ACTIVE: StudyGuard | None = None  # the guard of the running study (read by the Tune callback)
_UNFINISHED = ("RUNNING", "PENDING", "PAUSED")


class StudyGuard:
    """Ctrl-C handling for `run_study`, as a context manager around the whole study.

    Outside a Tune loop the first SIGINT only sets `interrupted` (the study checks it before each
    phase); inside one, the Tune callback `kdray.runtime.interrupt_watch.InterruptWatch` chains in front of Tune's own handler, which stops the
    loop and saves the phase's state, and remembers which trials were unfinished at that moment.
    A second SIGINT ends the process at once (exit 130); `--resume` closes its records then."""

    def __init__(self) -> None:
        self.interrupted = False
        self.phase: str | None = None
        self.unfinished: set[str] = set()   # trial ids unfinished at the interrupt
        self._trials: list = []
        self._old = None

    def __enter__(self) -> StudyGuard:
        global _ACTIVE
        _ACTIVE = self
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        _ACTIVE = None
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def rearm(self) -> None:
        """After a Tune run: Tune leaves its handler installed; put the study's back."""
        if self._old is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.interrupted:
            _exit_now()
        self._mark()

    def _mark(self) -> None:
        self.interrupted = True
        self.unfinished |= {t.trial_id for t in self._trials if t.status in _UNFINISHED}
        print(f"\n[kdray] Ctrl-C: stopping the study{f' in its {self.phase} phase' if self.phase else ''} "
              "after finalising its records (running trials are marked interrupted; resume with "
              "--resume). Press Ctrl-C again to exit at once.", file=sys.stderr, flush=True)

    def start_phase(self, phase: str) -> None:
        self.phase, self._trials = phase, []

    def mark_records(self, records: list[dict]) -> int:
        """Trials of the interrupted phase that were unfinished at the interrupt become
        `interrupted` (Tune reports them TERMINATED once it has stopped them); returns how many."""
        n = 0
        for r in records:
            if r.get("trial_id") in self.unfinished and r["status"] != "error":
                r["status"], n = "interrupted", n + 1
        return n


def _exit_now() -> None:
    print("\n[kdray] second Ctrl-C: exiting now; `--resume` closes the study's MLflow runs",
          file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_EXIT)


def guarded_handler(guard: StudyGuard, tune_handler):
    """The SIGINT handler during a Tune run: note the interrupt, then let Tune stop its loop
    (Tune's handler then restores the study's own, so a second Ctrl-C exits at once)."""

    def handler(signum, frame):
        if guard.interrupted:
            _exit_now()
        guard._mark()
        if callable(tune_handler):
            tune_handler(signum, frame)

    return handler


def job_placement_groups(job_hex: str) -> dict[str, dict]:
    """The placement groups of Ray job `job_hex` (hex) that are not removed, by hex id. A
    placement group's id ends with its creator's job id, so this needs no State API (no
    dashboard) and never touches another job's groups on a shared cluster."""
    from ray.util import placement_group_table

    return {k: v for k, v in placement_group_table().items()
            if k.endswith(job_hex) and v.get("state") != "REMOVED"}


def release_placement_groups(wait_s: float = 10.0) -> int:
    """Remove the placement groups this job created that are still alive (a stopped trial's Train
    controller dies without removing its workers' group, and Ray Train's cleaner needs the State
    API to notice). Removes, then re-checks until none is left or `wait_s` has passed; returns how
    many are left (0 expected)."""
    import ray
    from ray.util import remove_placement_group
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()
    deadline = time.time() + wait_s
    while True:
        alive = job_placement_groups(job)
        if not alive or time.time() > deadline:
            break
        for k in alive:
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(k))))
            except Exception as e:  # already gone, or a GCS hiccup: the next pass re-checks
                log.warning("placement group %s: %s", k, e)
        time.sleep(0.5)
    for k, info in alive.items():
        log.warning("placement group %s left: state %s, name %r, strategy %s, bundles %s",
                    k, info.get("state"), info.get("name"), info.get("strategy"),
                    info.get("bundles"))
    print(f"[kdray] placement groups of this study: {len(alive)} left", file=sys.stderr,
          flush=True)
    return len(alive)


# ---------------------------------------------------------------------------- closing records
def close_runs(client, experiment_id: str, parent: str, trials: list[dict]) -> dict[str, str]:
    """End every trial run of study `parent` that is still RUNNING, by its trial's status:
    finished -> FINISHED; stopped (ASHA) -> FINISHED, `kdray.stopped=asha`; error -> FAILED with
    `kdray.error` (and `error.txt` when the worker could not write one); interrupted, or a run
    no trial of this study claims -> KILLED, `kdray.status=interrupted`. Returns {run id: new
    status}."""
    by_key = {t["run_key"]: t for t in trials}
    runs = client.search_runs([experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent}' and "
                              "attributes.status = 'RUNNING'", max_results=5000)
    closed = {}
    for run in runs:
        t = by_key.get(run.data.tags.get("kdray.run_key"), {})
        status = t.get("status", "interrupted")
        rid = run.info.run_id
        if status == "finished":
            client.set_tag(rid, TAG_STATUS, "finished")
            end = "FINISHED"
        elif status == "stopped":
            client.set_tag(rid, TAG_STOPPED, "asha")
            client.set_tag(rid, TAG_STATUS, "stopped")
            end = "FINISHED"
        elif status == "error":
            why = t.get("error") or "the trial failed without a recorded error"
            if TAG_ERROR not in run.data.tags:
                client.set_tag(rid, TAG_ERROR, reason(why))
                client.log_text(rid, f"{why}\n\n(recorded by the study driver)\n", ERROR_ARTIFACT)
            client.set_tag(rid, TAG_STATUS, "failed")
            end = "FAILED"
        else:
            client.set_tag(rid, TAG_STATUS, "interrupted")
            end = "KILLED"
        client.set_terminated(rid, end)
        closed[rid] = end
    if closed:
        log.info("closed %d MLflow runs left RUNNING: %s", len(closed), closed)
    # stopped trials whose worker ended the run itself still get the tag
    for t in trials:
        if t["status"] == "stopped" and t.get("run_id") and t["run_id"] not in closed:
            client.set_tag(t["run_id"], TAG_STOPPED, "asha")
    return closed


def end_parent(client, parent: str, interrupted: bool) -> None:
    """The study run's end: FINISHED (`kdray.status=finished`) or KILLED (`interrupted`)."""
    client.set_tag(parent, TAG_STATUS, "interrupted" if interrupted else "finished")
    client.set_terminated(parent, "KILLED" if interrupted else "FINISHED")


class StudyInterrupted(KeyboardInterrupt):
    """Raised by `run_study` after an interrupted study's records were finalised."""

    def __init__(self, phase: str | None, results_path: str | None) -> None:
        table = f"table at {results_path}" if results_path else "no table yet"
        super().__init__(f"study interrupted{f' in its {phase} phase' if phase else ''}; "
                         f"records final, {table}; continue with --resume")
        self.phase, self.results_path = phase, results_path
