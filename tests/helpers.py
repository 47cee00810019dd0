"""Helpers shared by test files (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_study(name: str) -> ModuleType:
    """studies/<name>.py as a module (the study scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "studies" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextmanager
def gloo_group(rank: int, init: str, world_size: int = 2) -> Iterator[None]:
    """A gloo process group for a test worker started by `mp.spawn`. The ranks that finish meet
    at a barrier before the group is torn down: a rank destroying it while the other was still
    at work aborted the other once in CI ("terminate called without an active exception"). A
    rank that raised skips the barrier; `mp.spawn` then stops the rest."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # the ranks share the cores
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    finished = False
    try:
        yield
        finished = True
    finally:
        if finished:
            dist.barrier()
        dist.destroy_process_group()


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
