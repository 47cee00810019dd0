"""Ray session handling and pre-flight checks shared by `fit` and `run_study` (`check_study`: a
whole study checked before Ray starts)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from kdray.config import ExperimentConfig

if TYPE_CHECKING:
    from kdray.study.spec import Study

log = logging.getLogger(__name__)

# ray.train.report blocks until the controller polls (2 s by default; docs/runtime.md §P2). We report
# once per epoch, but short CPU epochs would still pay for it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def preflight(cfg: ExperimentConfig, **kw) -> None:
    """Every check that can fail before any Ray resource starts (kdray.engine.preflight)."""
    from kdray.engine.preflight import preflight as check_all

    check_all(cfg, **kw)


def resolve_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Make local paths absolute: Ray workers do not share the driver's working directory."""
    over = {}
    for key in ("data.root", "model.teacher_ckpt", "train.init_from"):
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v and "://" not in v and not os.path.isabs(v):
            over[key] = os.path.abspath(v)
    return cfg.override(over) if over else cfg


def ensure_ray(address: str | None = None, **init_kwargs) -> bool:
    """Connect to `address`, or start a local instance in-process. Returns True if we started it.

    The dashboard stays on: Train V2's placement-group cleanup needs the State API
    (docs/runtime.md §P1), and `address="local"` never attaches to a stale cluster file (docs/runtime.md §P7).
    """
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        # Ray's metrics agent serves Prometheus without auth on every interface unless the node
        # IP is loopback; a local run does not need it (docs/runtime.md §P13). Set
        # RAY_enable_metrics_collection=1 to keep it.
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        for attempt in range(2):
            _pin_local_address()  # a fresh port each try: a half-started GCS may hold the last
            try:
                ray.init(address="local", include_dashboard=None, dashboard_host="127.0.0.1",
                         configure_logging=True, logging_level=logging.WARNING, **init_kwargs)
                break
            except Exception as e:  # raylet/GCS start-up deadline missed on an overloaded box
                if attempt or "timed out during startup" not in str(e):
                    raise
                log.warning("local Ray start timed out; retrying once")
                ray.shutdown()
    else:
        try:
            ray.init(address=address, **init_kwargs)
        except ConnectionError as e:
            from kdray.checks import ConfigError

            raise ConfigError(f"--address {address}: no Ray cluster answers there ({e}); start "
                              "it (`ray up` / `ray start --head`) or drop --address to run "
                              "locally") from None
    stop_on_sigterm()
    return True


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a scheduler's stop, `timeout`) stops a run or study as Ctrl-C does, so
    its MLflow records are closed as interrupted. `ray.init` installs a SIGTERM handler that
    exits at once and leaves every record RUNNING; this replaces it (main thread only). The
    signal goes to whatever handles SIGINT at that moment (the study's guard, Tune's or Train's
    handler); where nothing does, or a shell started the job with SIGINT ignored (`cmd &`), it
    raises KeyboardInterrupt, which the one-process `fit` and the study treat as Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def _sigterm_as_interrupt(signum, frame) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _pin_local_address() -> None:
    """Give the local instance a known GCS port and export it as RAY_ADDRESS, so the processes
    it spawns (they inherit this environment) find *this* instance.

    Train V2's detached PlacementGroupCleaner asks the State API with no address; with several
    Ray instances on the machine (two studies, or other users) it fails with "Found multiple
    active Ray instances", leaked placement groups are never removed after ASHA stops a trial,
    and the next trial's workers wait forever (docs/runtime.md §P1). `address="local"` itself ignores
    RAY_ADDRESS.
    """
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"


def cluster_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials fit at once on the connected cluster (at least 1)."""
    import ray

    res = ray.cluster_resources()
    if gpus_per_trial > 0:
        return max(1, int(res.get("GPU", 0) // gpus_per_trial))
    if cpus_per_trial > 0:
        return max(1, int(res.get("CPU", 1) // cpus_per_trial))
    return 1


def check_study(study: Study, search_row: str | None = None, *, address: str | None = None,
                storage_path: str | None = None, tracking_uri: str | None = None,
                results_dir: str | None = None, stages_pending: bool = False) -> Study:
    """The study with absolute paths, after every config it can run (rows x seeds, the search
    space's corners) was built and pre-flighted (kdray.engine.preflight, once per distinct
    config) and its storage, results and tracking locations were checked; no Ray here.
    `stages_pending`: its stages have not run yet (see `preflight`)."""
    from kdray.checks import ConfigError
    from kdray.engine.preflight import check_locations
    from kdray.runtime.mlflow_store import default_tracking_uri

    if not study.seeds:
        raise ConfigError(f"study {study.name}: no seeds; pass --seeds, e.g. 0,1,2")
    study = replace(study, base=resolve_paths(study.base))
    seen = set()
    for c in study.validate(search_row):
        c = resolve_paths(c)
        key = (c.method, c.data, c.model, c.train.init_from, c.resources, c.eval)
        if key not in seen:
            seen.add(key)
            preflight(c, address=address, stages_pending=stages_pending)
    check_locations(storage_path=storage_path, results_dir=results_dir,
                    tracking_uri=tracking_uri or default_tracking_uri())
    return study
