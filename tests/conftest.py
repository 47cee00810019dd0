"""Shared fixtures: one Ray instance per test session, paths to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it fail (never skip) when it is missing."""
    assert SHARED_DATA.is_dir(), f"../shared/data not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance shared by the tests of a module (only test_runtime.py uses it), stopped
    when that module ends, so later tests never fork a process that hosts Ray's threads."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, dashboard_host="127.0.0.1",
                 include_dashboard=None, logging_level="WARNING")
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> str:
    """A data root shared by tests so the generated dataset is built once per session."""
    return str(tmp_path_factory.mktemp("data"))
