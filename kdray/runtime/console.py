"""kdray's console for a study: kdray's own lines on the terminal, Ray's output in a log file.

`StudyConsole` (a context manager, entered by kdray.runtime.cli_study.main around the whole
study, stages included):

- the terminal gets the lines of kdray.study.progress.Progress (one per trial epoch, a study
  line on each trial's end and every ~30 s), stdout lines starting with `[kdray]`, kdray's
  warnings and the results table;
- everything else written to stdout/stderr — Tune's status tables, forwarded worker output,
  Ray's internal C++ warnings — goes to `<storage>/<study>/console.log` only (file descriptors 1
  and 2 point there while the study runs), with Ray's log de-duplication off so it is complete;
- `verbose=True` changes nothing: Ray's output stays on the terminal, Tune at verbose=1.

The Tune side is `StudyConsole.callback(phase, index)`, a ray.tune.Callback per phase's Tuner;
it runs in the driver, not in the workers, so nothing is lost to Ray's log forwarding.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

from kdray.study.progress import Progress
from kdray.study.spec import Study

#: Ray loggers set to WARNING on the driver while a study runs (their INFO goes nowhere useful)
QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "ray.air")

_active: StudyConsole | None = None


def emit(text: str) -> None:
    """Print `text` on the study's terminal (or plain stdout when no study console is active)."""
    if _active is not None:
        _active.write(text)
    else:
        print(text, flush=True)


def tune_verbose() -> int:
    """Tune's own progress output: off under a quiet study console, else Tune's default 1."""
    return 0 if (_active is not None and not _active.verbose) else 1


def active() -> StudyConsole | None:
    return _active


_RAY_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)?\([^)]*\)(?:\x1b\[[0-9;]*m)?\s*")
_EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) (.*)$")


class _StageEcho:
    """While a stage trains (no Tune loop, so no Progress callback): its workers' forwarded
    `epoch i/n k=v ...` log lines become one terminal line per epoch (the first rank's)."""

    def __init__(self, label: str) -> None:
        self.label, self.seen = label, set()

    def line(self, raw: str) -> str | None:
        m = _EPOCH_LINE.match(_RAY_PREFIX.sub("", raw).strip())
        if m is None or m.group(1) in self.seen:
            return None
        self.seen.add(m.group(1))
        kv = dict(p.split("=", 1) for p in m.group(3).split() if "=" in p)
        parts = [f"epoch {m.group(1)}/{m.group(2)}"]
        if "train/loss" in kv:
            parts.append(f"loss {kv['train/loss']}")
        evals = {k: v for k, v in kv.items() if k.startswith(("test/", "val/"))
                 and "_ci" not in k and "/n_" not in k}
        parts += [f"{k} {v}" for k, v in evals.items()  # not `acc_5w1s_proto` = `acc_5w1s`
                  if evals.get(k.rpartition("_")[0]) != v][:4]
        if "perf/epoch_s" in kv:
            parts.append(f"{float(kv['perf/epoch_s']):.3g} s/epoch")
        return f"stage  {self.label}  " + "  ".join(parts)


_stage_echo: _StageEcho | None = None


@contextlib.contextmanager
def stage_lines(label: str) -> Iterator[None]:
    """Show a stage's epochs on the study's terminal while it trains (see `_StageEcho`)."""
    global _stage_echo
    _stage_echo = _StageEcho(label)
    try:
        yield
    finally:
        _stage_echo = None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Lines:
    """What `_Split` writes terminal lines to: the console's line output (live or plain); the
    caller holds the console's lock."""

    def __init__(self, console: StudyConsole) -> None:
        self.console = console

    def write(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            self.console._put(line)

    def flush(self) -> None:
        self.console.term.flush()


class _Split(io.TextIOBase):
    """sys.stdout/sys.stderr during a quiet study: everything to the log file; whole lines
    starting with `[kdray]` to the terminal as well."""

    def __init__(self, log: io.TextIOBase, term: io.TextIOBase, lock: threading.Lock) -> None:
        self.log, self.term, self.lock, self.buf = log, term, lock, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self.lock:
            self.log.write(s)
            self.buf += s
            *lines, self.buf = self.buf.split("\n")
            for line in lines:
                if line.startswith("[kdray]"):
                    self.term.write(line + "\n")
                elif _stage_echo is not None and (shown := _stage_echo.line(line)):
                    self.term.write(shown + "\n")
        return len(s)

    def flush(self) -> None:
        with self.lock:
            self.log.flush()
            self.term.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.log.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class _TermHandler(logging.Handler):
    """kdray's own warnings (logger `kdray`) on the terminal."""

    def __init__(self, console: StudyConsole) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.exc_info:
            msg += f" ({record.exc_info[1]!r}; traceback in {self.console.log_path})"
        self.console.write(f"[kdray] {record.levelname.lower()}: {msg}")


class StudyConsole:
    """See the module docstring. `stream`: the terminal (default: the process's stdout)."""

    def __init__(self, study: Study, log_path: str, *, verbose: bool = False,
                 stream: Any = None, every: float = 30.0, live: bool | None = None) -> None:
        self.study, self.log_path, self.verbose = study, log_path, verbose
        self.progress = Progress(study, every=every)
        self._stream = stream
        self.term: Any = stream or sys.stdout
        self._lock = threading.Lock()
        self._saved: list[Any] = []
        self._want_live = live  # None: a live status line when the terminal is a TTY
        self._live: Any = None
        self._status = ""

    # ------------------------------------------------------------ capture
    def __enter__(self) -> StudyConsole:
        global _active
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # the log file gets every line
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        if not self.verbose:
            self._quiet()
        _active = self
        return self

    def _quiet(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        log = open(self.log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        if self._stream is None:  # the real terminal: a copy of fd 1 before it is redirected
            self.term = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        saved_fds = [os.dup(1), os.dup(2)]
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
        for n in QUIET_LOGGERS:
            logging.getLogger(n).setLevel(logging.WARNING)
        handler = _TermHandler(self)
        logging.getLogger("kdray").addHandler(handler)
        self._saved = [sys.stdout, sys.stderr, saved_fds, log, levels, handler]
        if self._want_live or (self._want_live is None and _isatty(self.term)):
            self._start_live()
        sys.stdout = _Split(log, _Lines(self), self._lock)
        sys.stderr = _Split(log, _Lines(self), self._lock)

    def _start_live(self) -> None:
        """A rich live region at the bottom of the terminal holding the latest study line; every
        other line prints above it, as in the plain mode (CI logs get plain lines)."""
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(file=self.term, force_terminal=True, soft_wrap=True,
                          highlight=False)
        self._live = Live(Text(""), console=console, refresh_per_second=2, transient=True,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        if self._live is not None:  # the last study line stays on the terminal
            self._live.stop()
            self._live = None
            if self._status:
                self.term.write(self._status + "\n")
                self.term.flush()
        if not self._saved:
            return
        out, err, fds, log, levels, handler = self._saved
        self._saved = []
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            sys.stdout, sys.stderr = out, err
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in fds:
                os.close(fd)
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)
            logging.getLogger("kdray").removeHandler(handler)
            log.close()
            if self._stream is None:
                self.term.close()
                self.term = sys.stdout

    # ------------------------------------------------------------ output
    def write(self, text: str) -> None:
        with self._lock:
            self._put(text.rstrip("\n"))

    def _put(self, line: str) -> None:
        """One terminal line (the caller holds the lock): in live mode a study line replaces the
        live status, anything else prints above it."""
        if self._live is None:
            self.term.write(line + "\n")
            self.term.flush()
            return
        from rich.text import Text

        if line.startswith("study  "):
            self._status = line
            self._live.update(Text(line))
        else:
            self._live.console.print(Text(line))

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def stage(self, name: str, *, reused: bool, summary: str = "") -> None:
        self.lines(self.progress.stage(name, reused=reused, summary=summary))

    def callback(self, phase: str, index):
        """A ray.tune.Callback feeding the active console the phase's trial events."""
        from kdray.runtime.console_tune import ConsoleCallback

        return ConsoleCallback(phase, index, active)


def console_log_path(storage_path: str | None, study_name: str) -> str:
    """`<storage>/<study>/console.log` (./.kdray/<study>/ for remote storage)."""
    storage = storage_path or os.environ.get("KDRAY_STORAGE_PATH") or "ray_results"
    if "://" in storage:
        storage = ".kdray"
    return os.path.join(os.path.abspath(storage), study_name, "console.log")
