"""clusters/*.yaml pass Ray's offline checks and follow kdray's placement rules; the local
2-raylet cluster forms, runs a task on each node and stops every process it started."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import local_cluster as cluster_mod
import pytest
import yaml
from local_cluster import local_two_node_cluster

from kdray.runtime.cluster import ClusterConfigError, validate_cluster_yaml
from kdray.runtime.tune import TRIAL_SLOT

CLUSTERS = Path(__file__).parents[1] / "clusters"
AWS = CLUSTERS / "aws.yaml"
LOCAL = CLUSTERS / "local.yaml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _validate_dict(cfg: dict, tmp_path: Path) -> dict:
    path = tmp_path / "mutated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return validate_cluster_yaml(path)


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_cluster_yaml_passes_ray_checks(path: Path) -> None:
    assert validate_cluster_yaml(path) == _load(path)


def _typo_top_level(cfg: dict) -> None:
    cfg["setup_command"] = cfg.pop("setup_commands")


def _fractional_gpu(cfg: dict) -> None:
    cfg["available_node_types"]["gpu_g5_1x_spot"]["resources"]["GPU"] = 0.5


def _unknown_head_type(cfg: dict) -> None:
    cfg["head_node_type"] = "head_gpu"


def _min_workers_over_cap(cfg: dict) -> None:
    cfg["available_node_types"]["gpu_g5_1x_spot"]["min_workers"] = cfg["max_workers"] + 1


@pytest.mark.parametrize(("mutate", "reason"), [
    (_typo_top_level, r"'setup_command' was unexpected"),
    (_fractional_gpu, r"gpu_g5_1x_spot/resources/GPU: 0\.5 is not of type 'integer'"),
    (_unknown_head_type, r"head_node_type` must be one of"),
    (_min_workers_over_cap, r"smaller than the sum of `min_workers`"),
])
def test_mutated_aws_yaml_is_rejected(mutate, reason: str, tmp_path: Path) -> None:
    cfg = copy.deepcopy(_load(AWS))
    mutate(cfg)
    with pytest.raises(ClusterConfigError, match=reason):
        _validate_dict(cfg, tmp_path)


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("setup_command", ["true"], r"'setup_command' was unexpected"),
    ("provider", {"type": "local", "head_ip": "198.51.100.10"}, r"list of `worker_ips`"),
    ("available_node_types", {"x": {"resources": {}, "node_config": {}}},
     r"available_node_types is not supported"),
])
def test_mutated_local_yaml_is_rejected(key: str, value, reason: str, tmp_path: Path) -> None:
    cfg = {**_load(LOCAL), key: value}
    with pytest.raises(ClusterConfigError, match=reason):
        _validate_dict(cfg, tmp_path)


def test_unreadable_yaml_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ClusterConfigError, match="must be a mapping"):
        validate_cluster_yaml(tmp_path / "list.yaml")


# Credential-like strings: AWS key names and key ids, secrets/passwords/tokens with a value,
# private keys, and bare 40-character secret-access-key-shaped strings.
_CREDENTIALS = [
    re.compile(r"aws_access_key_id|aws_secret_access_key|aws_session_token", re.I),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(secret|password|passwd)\w*\s*[:=]\s*\S", re.I),
    re.compile(r"token\w*\s*[:=]\s*['\"]?[A-Za-z0-9+/_\-]{16,}", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
]


def _credential_hits(text: str) -> list[str]:
    return [m.group(0) for p in _CREDENTIALS for m in p.finditer(text)]


@pytest.mark.parametrize("path", [AWS, LOCAL, CLUSTERS / "README.md"], ids=lambda p: p.name)
def test_cluster_files_hold_no_credentials(path: Path) -> None:
    assert _credential_hits(path.read_text()) == []


@pytest.mark.parametrize("leak", [
    "  aws_access_key_id: x",
    "  key: AKIAIOSFODNN7EXAMPLE",
    "  SecretAccessKey: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "  - export RAY_AUTH_TOKEN=3f9a0c1d2e4b5a6978e1f2a3b4c5d6e7",
    "  password: hunter2",
])
def test_credential_scan_catches_a_planted_secret(leak: str) -> None:
    assert _credential_hits(AWS.read_text() + leak + "\n")


def test_trial_drivers_only_on_on_demand_nodes() -> None:
    cfg = validate_cluster_yaml(AWS)
    types = cfg["available_node_types"]
    spot = {n for n, t in types.items()
            if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"}
    slots = {n for n, t in types.items() if t["resources"].get(TRIAL_SLOT, 0) > 0}
    head = cfg["head_node_type"]
    assert head in slots and head not in spot
    assert types[head]["resources"]["CPU"] == 0  # no Train workers on the head
    assert not slots & spot
    assert all(types[n]["resources"].get("GPU", 0) == 0 for n in slots)


def test_gpu_capacity_is_diversified_with_on_demand_fallback() -> None:
    cfg = validate_cluster_yaml(AWS)
    types = cfg["available_node_types"]
    gpu = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    spot = {n for n, t in gpu.items() if "InstanceMarketOptions" in t["node_config"]}
    assert len({gpu[n]["node_config"]["InstanceType"] for n in spot}) >= 4
    assert len(cfg["provider"]["availability_zone"].split(",")) >= 3
    fallback = set(gpu) - spot
    assert fallback
    for n in fallback:  # same shape as a spot type, lower priority => used only as a fallback
        twins = [s for s in spot if gpu[s]["resources"] == gpu[n]["resources"]]
        assert twins and all(gpu[s]["priority"] > gpu[n].get("priority", 0) for s in twins)
    images = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(images) == 1 and re.fullmatch(r"ami-[0-9a-f]{17}", images.pop())


CONSTRAINTS = Path(__file__).parents[1] / "constraints.txt"


def _installed(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist).split("+")[0]
    except PackageNotFoundError:
        return None


def _pins(text: str) -> dict[str, str]:
    """name -> version of every `name[extras]==version` in `text` (quoted or one per line)."""
    return {m[0].lower(): m[1]
            for m in re.findall(r'(?m)(?:^|")([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^"\s]+)', text)}


def test_pins_read_back_from_both_forms() -> None:
    assert _pins('x "ray[default,train,tune]==2.60.0" "optuna==5.1.0"\n') == {
        "ray": "2.60.0", "optuna": "5.1.0"}
    assert _pins("# c\ntorch==2.14.1\nnumpy==2.4.6\n") == {"torch": "2.14.1", "numpy": "2.4.6"}


def test_the_client_runs_what_constraints_pin() -> None:
    """The README and CI install with -c constraints.txt, so every pinned package that is
    installed is at its pin (boto3 is only in the `aws` extra)."""
    pins = _pins(CONSTRAINTS.read_text())
    assert {"ray", "torch", "torchvision", "mlflow", "optuna"} <= set(pins)
    wrong = {d: (v, _installed(d)) for d, v in pins.items() if _installed(d) not in (None, v)}
    assert not wrong, f"installed != constraints.txt: {wrong}"


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_nodes_match_the_client_and_use_token_auth(path: Path) -> None:
    cfg = _load(path)
    setup = " ".join(cfg["setup_commands"])
    # every node installs exactly the client's pins: constraints.txt is the one list
    nodes, client = _pins(setup), _pins(CONSTRAINTS.read_text())
    assert {d: nodes.get(d) for d in client if d != "boto3"} == {
        d: v for d, v in client.items() if d != "boto3"}
    assert all(client.get(d) == v for d, v in nodes.items()), (nodes, client)
    assert '"ray[default,train,tune]==' in setup
    assert "uv venv --python 3.11" in setup and "pip install --python ~/venv/bin/python -e ~/kdray" in setup
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all("export RAY_AUTH_MODE=token" in c for c in ray_starts)
    head_start = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# ---------------------------------------------------------------- live local cluster


def _running(pid: int, start_time: int) -> bool:
    """Process `pid` exists, is not a zombie, and is the one that started at `start_time`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and int(fields[19]) == start_time


def _live_in_sessions(sids) -> list[int]:
    """PIDs of live (non-zombie) processes whose session id is in `sids`."""
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[3]) in sids:
            found.append(pid)
    return found


# The cluster tests run in a process of their own: a driver that joined the token-auth cluster
# keeps its auth mode and token in-process (Ray's core worker), so a failure halfway used to
# leave every later in-process `ray.init(address="local")` of the session failing with
# InvalidAuthToken. The bodies below are collected only inside that process.
_OWN_PROCESS = os.environ.get("KDRAY_TEST_OWN_PROCESS") == "1"


def _run_in_own_process(test: str) -> None:
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          f"{__file__}::{test}"], env={**os.environ, "KDRAY_TEST_OWN_PROCESS": "1"},
                         capture_output=True, text=True, timeout=900)
    print(res.stdout[-2000:])
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert "1 passed" in res.stdout, res.stdout[-3000:]


@pytest.mark.slow
def test_local_two_node_cluster_in_its_own_process() -> None:
    """`_two_node_cluster_body` in a fresh Python process (see `_OWN_PROCESS`)."""
    _run_in_own_process("test_two_node_cluster_body")


@pytest.mark.slow
def test_failed_worker_start_in_its_own_process() -> None:
    """`_failed_worker_start_body` in a fresh Python process (see `_OWN_PROCESS`)."""
    _run_in_own_process("test_failed_worker_start_body")


def _two_node_cluster_body(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The local 2-raylet cluster forms, runs a task on each node, and stops every process it
    started."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # One driver connection per process: this test cannot share the `ray_session` fixture.
    assert not ray.is_initialized(), "another test left this process connected to Ray"
    monkeypatch.setenv("HOME", str(tmp_path))  # keep ~/.ray/auth_token out of the real home
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    # An earlier in-process session caches another auth mode and token; the cluster must cope.
    own_tmp = tempfile.mkdtemp(prefix="kdray-t-", dir="/tmp")  # short: AF_UNIX path limit
    ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=own_tmp)
    ray.shutdown()
    shutil.rmtree(own_tmp, ignore_errors=True)

    @ray.remote(num_cpus=1)
    def where() -> tuple[str, int, int, str]:
        import kdray  # the nodes' PYTHONPATH holds the repo root

        node = ray.get_runtime_context().get_node_id()
        return node, os.getpid(), os.getsid(0), str(Path(kdray.__file__).resolve())

    t0 = time.monotonic()
    with local_two_node_cluster(head_resources={TRIAL_SLOT: 1}) as cluster:
        t_up = time.monotonic() - t0
        assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_ADDRESS"] == cluster.address
        ray.init(address=cluster.address)
        try:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            pin = [NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in nodes]
            got = ray.get([where.options(scheduling_strategy=s).remote() for s in pin], timeout=120)
            started = set(cluster.pids)
        finally:
            ray.shutdown()
        t_exit = time.monotonic()
    t_total = time.monotonic() - t0
    print(f"\nlocal 2-node cluster: up {t_up:.1f} s, teardown {time.monotonic() - t_exit:.1f} s, "
          f"total {t_total:.1f} s")

    assert len(nodes) == 2
    assert [n["Resources"]["CPU"] for n in nodes] == [1.0, 1.0]
    head = [TRIAL_SLOT in n["Resources"] for n in nodes]
    assert sorted(head) == [False, True]
    assert [g[0] for g in got] == [n["NodeID"] for n in nodes]
    # Each task ran in a worker forked by its node's raylet, inside that `ray start` session.
    head_sid, worker_sid = cluster.session_ids
    assert [g[2] for g in got] == [head_sid if h else worker_sid for h in head]
    repo_pkg = str((Path(__file__).parents[1] / "kdray" / "__init__.py").resolve())
    assert [g[3] for g in got] == [repo_pkg, repo_pkg]
    assert len(started) >= 10 and started <= set(cluster.pids)  # GCS, raylets, dashboard, agents
    assert [pid for pid, start in cluster.pids.items() if _running(pid, start)] == []
    assert _live_in_sessions(cluster.session_ids) == []  # includes the task workers
    assert not cluster.temp_dir.exists()
    assert "RAY_AUTH_TOKEN" not in os.environ and "RAY_ADDRESS" not in os.environ


def _failed_worker_start_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker node that fails to start stops the head it joined (nothing left running)."""
    real_start = cluster_mod._ray_start
    calls: list[tuple[int, list[str]]] = []

    def start_with_broken_worker(args, env, timeout_s):
        if "--head" not in args:
            args = [*args, "--no-such-flag"]
        sid, rc, out = real_start(args, env, timeout_s)
        calls.append((sid, args))
        return sid, rc, out

    monkeypatch.setattr(cluster_mod, "_ray_start", start_with_broken_worker)
    with pytest.raises(RuntimeError, match="for the worker node failed"):
        with local_two_node_cluster():
            pytest.fail("must not yield")
    assert len(calls) == 3  # head, worker, one worker retry
    sids = {sid for sid, _ in calls}
    temp_dir = Path(next(a for a in calls[0][1] if a.startswith("--temp-dir=")).split("=", 1)[1])
    assert _live_in_sessions(sids) == []
    assert not temp_dir.exists()


if _OWN_PROCESS:  # collected only in the process `_run_in_own_process` starts
    test_two_node_cluster_body = _two_node_cluster_body
    test_failed_worker_start_body = _failed_worker_start_body
