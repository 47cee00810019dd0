"""Helpers shared by test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_study(name: str) -> ModuleType:
    """studies/<name>.py as a module (the study scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "studies" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kill_once(epoch: int, rank: int, marker: str):
    """An epoch hook for `fit(..., epoch_hooks=[...])`: SIGKILL the worker of `rank` once, at the
    start of `epoch`; `marker` (a file) records that it happened. A closure, so Ray ships it to
    the workers by value (the workers cannot import this module)."""
    import os
    import signal

    def hook(ep: int, rk: int) -> None:
        if ep != epoch or rk != rank or os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

    return hook


def fail_once(epoch: int, marker: str):
    """An epoch hook that raises a (retryable) OSError once, at the start of `epoch`."""
    import os

    def hook(ep: int, rk: int) -> None:
        if ep != epoch or os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        raise OSError("injected I/O error")

    return hook
