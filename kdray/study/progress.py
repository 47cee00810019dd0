"""The study's console, as plain text: one line per trial epoch and a study line on each trial's
end and every ~30 s (stages, grid i/n, search i/n, running, elapsed, ETA from measured epoch
times, best so far on val). No Ray: kdray.runtime.console feeds it Tune's events and prints what
it returns, so a recorded sequence of events can be replayed in a test."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kdray.study.spec import BEST_LABEL, ROW_KEY, SEED_KEY, Study

PHASES = ("grid", "search", "best")


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def short_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return ",".join(short_value(x) for x in v)
    return str(v)


def run_name(phase: str, params: Mapping[str, Any], index: int = 0) -> str:
    """A trial's readable name (console and MLflow): `+ supervised [CLS] (Eq. 3) · s0` for a
    row, `search 03 · w_patch=1.1 teacher_temp=0.0615` for a searched point,
    `best searched (val-selected) · s0` for its re-run; `stage · NAME` for a stage."""
    seed = f" · s{params[SEED_KEY]}" if SEED_KEY in params else ""
    if phase == "stage":
        return f"stage · {params.get('name', '')}"
    if phase == "search":
        pts = " ".join(f"{k.split('.')[-1]}={short_value(v)}" for k, v in params.items()
                       if k not in (ROW_KEY, SEED_KEY))
        return f"search {index:02d}" + (f" · {pts}" if pts else "") + seed
    if phase == "best":
        return BEST_LABEL + seed
    return str(params.get(ROW_KEY, f"trial {index:02d}")) + seed


@dataclass
class _Trial:
    name: str
    phase: str
    started: float
    last: float
    epoch: int = 0
    done: bool = False
    first: float | None = None  # start to first report: start-up + first epoch
    epoch_times: list[float] = field(default_factory=list)
    epochs: int = 0  # the trial's own length (a row may set its own train.epochs)


class Progress:
    """Turns trial events into console lines. `clock`: seconds (time.monotonic by default);
    `every`: seconds between study lines when nothing else reported."""

    def __init__(self, study: Study, *, clock: Callable[[], float] = time.monotonic,
                 every: float = 30.0) -> None:
        self.study, self.clock, self.every = study, clock, every
        self.t0 = clock()
        self.last_line = self.t0
        self.epochs = study.base.train.epochs
        seeds = len(study.seeds)
        grid = (len(study.rows) or 1) * seeds if (study.rows or not study.space) else 0
        self.total = {"grid": grid, "search": study.num_samples if study.space else 0,
                      "best": seeds if study.space else 0}
        self.trials: dict[str, _Trial] = {}
        self.stages: list[str] = []
        self.best_val: tuple[float, str] | None = None
        self.peak = 1  # most trials seen running at once
        self.last_state: tuple = ()

    # ------------------------------------------------------------------ events
    def stage(self, name: str, *, reused: bool = False, summary: str = "") -> list[str]:
        self.stages.append(name)
        how = "reused" if reused else f"trained in {duration(self.clock() - self.t0)}"
        return self._out([f"[kdray] stage {name} ✓ ({how}){': ' + summary if summary else ''}"])

    def start(self, key: str, phase: str, name: str,
              params: Mapping[str, Any] | None = None) -> list[str]:
        now = self.clock()
        if key not in self.trials:
            epochs = self.study.trial_epochs(dict(params)) if params else self.epochs
            self.trials[key] = _Trial(name, phase, now, now, epochs=epochs)
        self.peak = max(self.peak, sum(not t.done for t in self.trials.values()))
        return []

    def result(self, key: str, phase: str, name: str, metrics: Mapping[str, Any],
               params: Mapping[str, Any] | None = None) -> list[str]:
        """One trial epoch: `grid  + supervised [CLS] (Eq. 3) · s0  epoch 1/2  loss 5.41
        test/acc_5w1s 33.77 ± 1.26  12.3 s/epoch`."""
        self.start(key, phase, name, params)
        t, now = self.trials[key], self.clock()
        epoch = int(metrics.get("epoch", t.epoch + 1))
        took = (now - t.last) / max(1, epoch - t.epoch)
        if t.first is None:
            t.first = now - t.last
        else:
            t.epoch_times.append(took)
        started = t.epoch == 0
        t.epoch, t.last = epoch, now
        mkey = self.study.select_key if phase == "search" else self.study.key()
        v = metrics.get(mkey)
        if phase == "search" and _finite(v):
            sign = 1 if self.study.mode == "max" else -1
            if self.best_val is None or sign * float(v) > sign * self.best_val[0]:
                self.best_val = (float(v), name)
        score = f"{mkey} –"
        if _finite(v):
            ci = metrics.get(mkey + "_ci95")
            score = f"{mkey} {float(v):.2f}" + (f" ± {float(ci):.2f}" if _finite(ci) else "")
        loss = metrics.get("train/loss")
        loss_s = f"loss {float(loss):.4g}" if _finite(loss) else "loss –"
        pace = f"{took:.1f} s incl. start-up" if started else f"{took:.1f} s/epoch"
        return self._out([f"{_prefix(phase, name)}{name}  epoch {epoch}/{t.epochs}  {loss_s}  "
                          f"{score}  {pace}"])

    def complete(self, key: str, phase: str, name: str, error: str | None = None,
                 params: Mapping[str, Any] | None = None) -> list[str]:
        self.start(key, phase, name, params)
        t = self.trials[key]
        t.done = True
        lines = []
        if error:
            lines.append(f"{_prefix(phase, name)}{name}  ✗ failed: "
                         f"{error.strip().splitlines()[-1][:160]}")
        elif t.epoch < t.epochs:
            lines.append(f"{_prefix(phase, name)}{name}  stopped at epoch {t.epoch}/{t.epochs}"
                         " (ASHA)")
        return self._out(lines + [self.study_line()])

    def settle(self, phase: str, trials: list[tuple[str, str]]) -> list[str]:
        """After a phase: its ended trials (id, name) that sent no event — a phase restored by
        `--resume` after it was over — count as done; a study line when there were any."""
        now, new = self.clock(), 0
        for key, name in trials:
            if key not in self.trials:
                self.trials[key] = _Trial(name, phase, now, now, done=True, epochs=self.epochs)
                new += 1
            self.trials[key].done = True
        return self._out([self.study_line()]) if new else []

    def tick(self) -> list[str]:
        """A study line when nothing was printed for `every` seconds; when only the clock moved
        since the last study line (a trial that started but has not reported yet is no move),
        every 4 x `every` seconds."""
        now = self.clock()
        if now - self.last_line < self.every:
            return []
        if self._state() == self.last_state and now - self.last_line < 4 * self.every:
            return []
        return self._out([self.study_line()])

    # ------------------------------------------------------------------ lines
    def _state(self) -> tuple:
        return tuple((t.phase, t.epoch, t.done) for t in self.trials.values()
                     if t.epoch or t.done)

    def study_line(self) -> str:
        self.last_state = self._state()
        now = self.clock()
        parts = []
        if self.stages:
            parts.append(f"stages {len(self.stages)} ✓")
        for phase in PHASES:
            if self.total[phase]:
                done = sum(t.done for t in self.trials.values() if t.phase == phase)
                parts.append(f"{phase} {done}/{self.total[phase]}")
        running = sum(not t.done for t in self.trials.values())
        parts.append(f"running {running}")
        parts.append(f"{duration(now - self.t0)} elapsed")
        eta = self.eta()
        parts.append(f"ETA ~{duration(eta)}" if eta is not None else "ETA –")
        best = self.best_val
        if self.total["search"]:  # a study without a search has no val-selected best
            parts.append(f"best {self.study.select_key} {best[0]:.2f} ({best[1]})" if best
                         else f"best {self.study.select_key} –")
        return "study  " + " · ".join(parts)

    def eta(self) -> float | None:
        """Time left, over the most trials seen running at once: the measured start-up plus
        first epoch of each trial not yet reported, and the mean measured later epoch for every
        epoch after that (unfinished trials at full length; ASHA may stop some earlier)."""
        firsts = [t.first for t in self.trials.values() if t.first is not None]
        if not firsts:
            return None
        times = [x for t in self.trials.values() for x in t.epoch_times]
        first = sum(firsts) / len(firsts)
        per_epoch = sum(times) / len(times) if times else first
        left, n_left = 0.0, 0
        for t in self.trials.values():
            if not t.done:
                n_left += 1
                left += (first + (t.epochs - 1) * per_epoch if t.first is None
                         else (t.epochs - t.epoch) * per_epoch)
        for phase in PHASES:
            seen = sum(t.phase == phase for t in self.trials.values())
            n_left += max(0, self.total[phase] - seen)
            left += max(0, self.total[phase] - seen) * (first + (self.epochs - 1) * per_epoch)
        # in parallel over the most trials seen running at once, but never over more trials
        # than are left (the last trial runs alone)
        return left / max(1, min(self.peak, n_left))

    def _out(self, lines: list[str]) -> list[str]:
        if lines:
            self.last_line = self.clock()
        return lines


def _prefix(phase: str, name: str) -> str:
    """The phase in front of a trial's line, unless its name starts with it (`search 03`)."""
    return "" if name.startswith(phase) else f"{phase:<6} "


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def console_table(results_md: str) -> str:
    """The part of a results file the console shows at the end: its tables and notes, not the
    header (the study's facts stay in the file)."""
    lines = results_md.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), 0)
    return "\n".join(lines[first:]).strip()


#: kdray.phase tag of each Tune phase (the val-selected point's re-run is the "final" one)
PHASE_TAG = {"grid": "grid", "search": "search", "best": "final", "stage": "stage"}


def run_tags(phase: str, params: Mapping[str, Any], cfg) -> dict[str, str]:
    """MLflow tags of a trial or stage run, for grouping and filtering in the UI: kdray.row,
    kdray.seed, kdray.phase (stage | grid | search | final), kdray.split, kdray.method."""
    row = params.get(ROW_KEY) or {"best": BEST_LABEL, "search": "search"}.get(phase, phase)
    return {"kdray.row": str(row), "kdray.seed": str(cfg.seed), "kdray.phase": PHASE_TAG[phase],
            "kdray.split": cfg.eval.split, "kdray.method": cfg.method}


def trial_index(trial_name: str) -> int:
    """The number in a Tune trial name made by kdray.study.spec.trial_name (`a-t003-s0`)."""
    import re

    m = re.search(r"(?:^|-)t(\d+)(?:-|$)", trial_name)
    return int(m.group(1)) if m else 0
