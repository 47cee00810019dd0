"""Run identity (no Ray): an unnamed run gets a name of its own, a name resumes only its own
config, --fresh starts over; NaN/inf fail every range check; cluster warnings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from kdray.checks import ConfigError, check_range
from kdray.config import ExperimentConfig
from kdray.runtime.run_identity import RUN_RECORD, claim_run, unique_run_name


def test_unnamed_runs_get_distinct_names() -> None:
    a = ExperimentConfig()
    b = a.override({"model.arch": "conv4", "seed": 7, "optim.lr": 0.05})
    names = {unique_run_name(a), unique_run_name(a), unique_run_name(b)}
    assert len(names) == 3 and all(n.startswith("run-") for n in names)


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "uri"])
def test_a_name_resumes_only_its_own_config(tmp_path: Path, as_uri: bool) -> None:
    """Local storage, and storage given as a URI (file:// here; s3:// and gs:// go through the
    same pyarrow filesystem calls)."""
    cfg = ExperimentConfig()
    where = f"file://{tmp_path}" if as_uri else str(tmp_path)
    first = claim_run(cfg, where, "exp")
    assert (tmp_path / "exp" / RUN_RECORD).is_file()
    assert claim_run(cfg, where, "exp") == first  # same config: resume, same MLflow key
    other = cfg.override({"optim.lr": 0.05})
    with pytest.raises(ConfigError, match=r"another config.*optim\.lr.*--fresh"):
        claim_run(other, where, "exp")
    (tmp_path / "exp" / "checkpoint_000000").mkdir()
    fresh = claim_run(other, where, "exp", fresh=True)
    assert not (tmp_path / "exp" / "checkpoint_000000").exists()
    assert claim_run(other, where, "exp") == fresh
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint_000000").mkdir()
    with pytest.raises(ConfigError, match="without a kdray record"):
        claim_run(cfg, where, "old")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_range_checks_reject_non_finite(value: float) -> None:
    with pytest.raises(ConfigError, match="finite"):
        check_range("k", value)
    with pytest.raises(ConfigError, match="finite"):
        check_range("k", value, 0.0, 1.0)


@pytest.mark.parametrize("key", ["optim.lr", "optim.weight_decay", "data.mixup_alpha",
                                 "model.drop_path", "resources.gpus_per_worker"])
def test_config_rejects_nan(key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ExperimentConfig().override({key: "nan"})


def test_cluster_warnings_on_world_open_ingress_and_full_access_workers() -> None:
    from kdray.runtime.cluster import cluster_warnings

    aws = yaml.safe_load((Path(__file__).parents[1] / "clusters" / "aws.yaml").read_text())
    assert [w for w in cluster_warnings(aws) if "placeholder" not in w] == []
    aws["available_node_types"]["gpu_g5_1x_spot"]["node_config"]["IamInstanceProfile"] = {
        "Name": "ray-autoscaler-v1"}
    del aws["available_node_types"]["driver_cpu"]["node_config"]["SecurityGroupIds"]
    aws["provider"]["security_group"] = {"GroupName": "x", "IpPermissions": [
        {"FromPort": 5000, "ToPort": 5000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    text = "\n".join(cluster_warnings(aws))
    assert "gpu_g5_1x_spot" in text and "ray-autoscaler-v1" in text
    assert "driver_cpu: no SecurityGroupIds" in text and "0.0.0.0/0" in text
    assert "head_cpu" not in text  # the autoscaler's profile belongs on the head
