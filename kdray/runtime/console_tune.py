"""The Tune side of kdray.runtime.console: a driver-side ray.tune.Callback that hands each
phase's trial events to the active study console. It holds no console itself, only the function
that finds the active one (Tune pickles its callbacks with the experiment state; a restored
Tuner then reports to the console of the process that restored it)."""

from __future__ import annotations

from ray.tune import Callback

from kdray.study.progress import run_name


class ConsoleCallback(Callback):
    """`phase`: grid | search | best; `index(trial_id)`: the trial's number in its phase;
    `active()`: the study console now active, or None (kdray.runtime.console.active)."""

    def __init__(self, phase: str, index, active) -> None:
        self.phase, self.index, self.active = phase, index, active

    def _name(self, trial) -> str:
        return run_name(self.phase, dict(trial.config or {}), self.index(trial.trial_id))

    def on_trial_start(self, iteration, trials, trial, **info):
        c = self.active()
        if c is not None:
            c.progress.start(trial.trial_id, self.phase, self._name(trial), trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        c = self.active()
        if c is not None:
            c.lines(c.progress.result(trial.trial_id, self.phase, self._name(trial), result,
                                      trial.config))

    def on_trial_complete(self, iteration, trials, trial, **info):
        c = self.active()
        if c is not None:
            c.lines(c.progress.complete(trial.trial_id, self.phase, self._name(trial),
                                        params=trial.config))

    def on_trial_error(self, iteration, trials, trial, **info):
        c = self.active()
        if c is None:
            return
        c.lines(c.progress.complete(trial.trial_id, self.phase, self._name(trial),
                                    error=_error_line(trial), params=trial.config))

    def on_step_end(self, iteration, trials, **info):
        c = self.active()
        if c is not None:
            c.lines(c.progress.tick())


def _error_line(trial) -> str:
    """The last line of the trial's error (its error.txt holds the worker's traceback)."""
    try:
        path = trial.error_file
        if path:
            with open(path) as f:
                lines = [x for x in f.read().splitlines() if x.strip()]
            if lines:
                return lines[-1].strip()
        err = trial.get_pickled_error() or trial.get_error()
        if err is not None:
            return repr(err)
    except Exception:  # noqa: S110 - the console log has the traceback
        pass
    return "see the console log"
