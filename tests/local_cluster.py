"""Test support: a 2-raylet Ray cluster on this machine (test_clusters.py, two_node_fit.py).

`local_two_node_cluster` never calls `ray stop`, which would end every Ray instance on the machine.
Each `ray start` runs in a new session (setsid), so every process it spawns (GCS, raylets,
dashboard, agents, and the workers the raylets fork later) carries that session id. At exit those
are signalled by PID (SIGTERM, then SIGKILL), with start times checked so that a recycled PID is
never hit (docs/runtime.md §P7, §P9). Linux only: the process table is read from /proc.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LocalCluster:
    """A running local cluster. `pids` maps every process seen in its sessions to its start time.

    Attributes:
        address: GCS address as Ray recorded it (`<node ip>:<port>`), for `ray.init(address=...)`.
        dashboard_url: dashboard, bound to 127.0.0.1.
        temp_dir: Ray's `--temp-dir` for both nodes (sessions, logs, sockets); removed on exit.
        session_ids: the session ids of the two `ray start` calls (head, worker).
        pids: pid -> start time (clock ticks since boot) of each process seen in those sessions.
    """

    address: str
    dashboard_url: str
    temp_dir: Path
    session_ids: tuple[int, ...] = ()
    pids: dict[int, int] = field(default_factory=dict)

    def live_pids(self) -> set[int]:
        """PIDs of this cluster's processes that are still running (zombies count as gone)."""
        return set(_snapshot(self.session_ids, self.pids))


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session id, start time) from /proc/<pid>/stat, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    return f[0], int(f[1]), int(f[3]), int(f[19])


def _snapshot(sids: tuple[int, ...], known: Mapping[int, int]) -> dict[int, int]:
    """Live processes in sessions `sids`, their descendants, and still-running `known` PIDs."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] not in "ZX":
            table[int(entry.name)] = st
    ours = {pid for pid, st in table.items() if st[2] in sids}
    ours |= {pid for pid, st in table.items() if known.get(pid) == st[3]}
    grew = True
    while grew:  # a child that called setsid itself is still found through its parent
        new = {pid for pid, st in table.items() if st[1] in ours} - ours
        ours |= new
        grew = bool(new)
    return {pid: table[pid][3] for pid in ours}


def _stop_processes(cluster: LocalCluster, grace_s: float, kill_timeout_s: float) -> None:
    """SIGTERM every process of `cluster`, SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_timeout_s)):
        signalled: set[int] = set()
        deadline = time.monotonic() + wait_s
        while live := _snapshot(cluster.session_ids, cluster.pids):
            cluster.pids.update(live)
            if time.monotonic() > deadline:
                break
            for pid in live.keys() - signalled:  # newcomers (a worker forked late) get it too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            signalled |= live.keys()
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"Ray processes survived SIGKILL: {sorted(live)}")


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free on all interfaces (GCS binds 0.0.0.0) at the time of the call."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_start(args: list[str], env: Mapping[str, str], timeout_s: float) -> tuple[int, int, str]:
    """Run `ray start <args>` as a new session leader. Returns (session id, exit code, output)."""
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", *args]
    proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0] + f"\n[kdray] timed out after {timeout_s:.0f} s"
    return proc.pid, proc.returncode, out or ""


def _node_env(token: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    paths = [str(_REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))  # workers can import kdray
    env.update(extra or {})
    return env


def _refresh_driver_auth() -> None:
    """Make an already-imported Ray re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN (they are cached)."""
    ray = sys.modules.get("ray")
    if ray is None or ray.is_initialized():  # never touch the config of a live connection
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError) as e:  # private API; connecting may still work
        log.warning("could not refresh Ray's cached auth settings: %s", e)


@contextlib.contextmanager
def _driver_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the block; restore the previous values afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _refresh_driver_auth()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_driver_auth()


def _disconnect_driver(address: str) -> None:
    """`ray.shutdown()` if this process is still connected to the cluster being stopped."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    with contextlib.suppress(Exception):  # best effort: the caller should have shut down
        if ray.get_runtime_context().gcs_address != address:
            return
    log.warning("driver still connected to %s at teardown; calling ray.shutdown()", address)
    ray.shutdown()


def _forget_address(cluster: LocalCluster) -> None:
    """Remove `ray_current_cluster` files that point at this cluster (docs/runtime.md §P7)."""
    from ray._common.utils import get_default_ray_temp_dir

    for d in (cluster.temp_dir, Path(get_default_ray_temp_dir())):
        f = d / "ray_current_cluster"
        with contextlib.suppress(OSError):
            if f.read_text().strip() == cluster.address:
                f.unlink()


def _start_nodes(cluster: LocalCluster, num_cpus: int, object_store_mb: int,
                 head_resources: Mapping[str, float], env: Mapping[str, str],
                 timeout_s: float) -> None:
    port, dash, client, agent_head, agent_worker = _free_ports(5)
    cluster.address = f"127.0.0.1:{port}"
    cluster.dashboard_url = f"http://127.0.0.1:{dash}"
    common = [f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb * 2**20}",
              "--node-ip-address=127.0.0.1", "--disable-usage-stats",
              f"--temp-dir={cluster.temp_dir}"]
    head = ["--head", f"--port={port}", *common, "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_head}",
            f"--resources={json.dumps(dict(head_resources))}"]
    _start_one(cluster, "head", head, env, timeout_s)
    # A loaded 2-core box sometimes misses the 30 s node-registration deadline of the joining
    # raylet ("Failed to get node info: Deadline Exceeded"); the failed attempt's processes stay
    # recorded (stopped at exit) and one more attempt gets fresh ports.
    for attempt in range(2):
        worker = [f"--address={cluster.address}", *common,
                  f"--dashboard-agent-listen-port={agent_worker if attempt == 0 else _free_ports(1)[0]}"]
        try:
            _start_one(cluster, "worker", worker, env, timeout_s)
            break
        except RuntimeError:
            if attempt == 1:
                raise
            log.warning("worker raylet failed to join; retrying once")
    recorded = cluster.temp_dir / "ray_current_cluster"
    if recorded.exists():  # Ray swaps 127.0.0.1 for the node's reachable IP; use its address
        cluster.address = recorded.read_text().strip() or cluster.address


def _start_one(cluster: LocalCluster, role: str, args: list[str], env: Mapping[str, str],
               timeout_s: float) -> None:
    sid, rc, out = _ray_start(args, env, timeout_s)
    cluster.session_ids += (sid,)
    cluster.pids.update(_snapshot(cluster.session_ids, cluster.pids))
    log.debug("ray start (%s node), exit code %s:\n%s", role, rc, out)
    if rc != 0:
        raise RuntimeError(f"`ray start` for the {role} node failed ({rc}):\n{out[-4000:]}")


@contextlib.contextmanager
def local_two_node_cluster(*, num_cpus: int = 1, object_store_mb: int = 512,
                           head_resources: Mapping[str, float] | None = None,
                           env: Mapping[str, str] | None = None, start_timeout_s: float = 120.0,
                           stop_grace_s: float = 2.0, keep_logs: bool = False
                           ) -> Iterator[LocalCluster]:
    """Start a head and one worker raylet on this machine; stop exactly those processes on exit.

    Start-up takes 16-22 s on a 2-core box, teardown 2-5 s. Token auth is on: a fresh random token
    is given to both nodes and to this process. Inside the block `RAY_AUTH_MODE=token`,
    `RAY_AUTH_TOKEN` and `RAY_ADDRESS` are set in `os.environ` (so `ray.init()` and
    `ray.init(address=cluster.address)` both reach this cluster) and restored afterwards. The
    repository root is put on the nodes' PYTHONPATH so Ray workers can import kdray. Call
    `ray.shutdown()` before leaving the block; if the driver is still connected it is done here.

    Args:
        num_cpus: CPUs each node advertises.
        object_store_mb: object store size of each node (Ray's default is 30% of RAM each).
        head_resources: custom resources on the head only, e.g. `{"kd_trial_slot": 2}`.
        env: extra environment for the Ray processes (and so for every Ray worker).
        start_timeout_s: limit for each `ray start`.
        stop_grace_s: wait after SIGTERM before SIGKILL (GCS and raylets often ignore SIGTERM).
        keep_logs: keep `temp_dir` (Ray's session logs) after exit instead of deleting it.

    Yields:
        The running `LocalCluster`; its `pids` record every process that was stopped.
    """
    token = secrets.token_hex(32)
    temp_dir = Path(tempfile.mkdtemp(prefix="kdray-ray-", dir="/tmp"))  # short: AF_UNIX limit
    cluster = LocalCluster(address="", dashboard_url="", temp_dir=temp_dir)
    try:
        _start_nodes(cluster, num_cpus, object_store_mb, head_resources or {},
                     _node_env(token, env), start_timeout_s)
        with _driver_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                          "RAY_ADDRESS": cluster.address}):
            try:
                yield cluster
            finally:
                _disconnect_driver(cluster.address)
    finally:
        _stop_processes(cluster, stop_grace_s, kill_timeout_s=30.0)
        _forget_address(cluster)
        if not keep_logs:
            shutil.rmtree(temp_dir, ignore_errors=True)

