"""Offline validation of `ray up` cluster YAMLs (`kdray cluster validate FILE`).

`validate_cluster_yaml` runs the checks `ray up` makes before it touches a cloud API (docs/runtime.md
§10.3), so a broken `clusters/*.yaml` fails in CI, not after an AMI boots.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

from kdray.checks import ConfigError

#: instance profiles / roles that grant far more than the storage bucket (Ray's default profile
#: has EC2 and S3 full access): only the head, which runs the autoscaler, may hold them
FULL_ACCESS_PROFILES = ("ray-autoscaler-v1", "AdministratorAccess", "AmazonEC2FullAccess",
                        "AmazonS3FullAccess")
WORLD = ("0.0.0.0/0", "::/0")


class ClusterConfigError(ConfigError):
    """A cluster launcher YAML that `ray up` would reject."""


def cluster_warnings(raw: dict[str, Any]) -> list[str]:
    """Exposure that `ray up` accepts but kdray does not want (docs/runtime.md, clusters/README.md):
    world-open ingress (a rule from 0.0.0.0/0, or an AWS node type without SecurityGroupIds,
    for which Ray creates a group with SSH open to 0.0.0.0/0), a full-access instance profile on
    a node other than the head, and placeholders (REPLACE) not yet filled in."""
    out: list[str] = []
    provider = raw.get("provider") or {}
    for rule in (provider.get("security_group") or {}).get("IpPermissions") or []:
        for r in (rule.get("IpRanges") or []) + (rule.get("Ipv6Ranges") or []):
            cidr = r.get("CidrIp") or r.get("CidrIpv6")
            if cidr in WORLD:
                out.append(f"provider.security_group: ports {rule.get('FromPort')}-"
                           f"{rule.get('ToPort')} open to {cidr}; allow your own CIDR only")
    if provider.get("type") == "aws":
        head = raw.get("head_node_type")
        for name, node in (raw.get("available_node_types") or {}).items():
            nc = node.get("node_config") or {}
            if not nc.get("SecurityGroupIds"):
                out.append(f"available_node_types.{name}: no SecurityGroupIds, so Ray creates a "
                           "security group with SSH open to 0.0.0.0/0; set the kdray-cluster "
                           "group (clusters/README.md)")
            profile = nc.get("IamInstanceProfile") or {}
            ident = str(profile.get("Name") or profile.get("Arn") or "")
            if name != head and any(p in ident for p in FULL_ACCESS_PROFILES):
                out.append(f"available_node_types.{name}: IamInstanceProfile {ident!r} is a "
                           "full-access profile on a non-head node; give workers a profile "
                           "limited to the storage bucket (clusters/aws-worker-policy.json)")
    text = yaml.safe_dump(raw)
    if "REPLACE" in text:
        keys = sorted({line.split(":")[0].strip(" -") for line in text.splitlines()
                       if "REPLACE" in line})
        out.append(f"placeholders still to fill in ({', '.join(keys)}): see the file's header")
    return out


def validate_cluster_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate a `ray up` cluster YAML offline, with the installed Ray's own checks.

    Two stages, as `ray up` runs them: the raw file against `ray/autoscaler/ray-schema.json`
    (unknown keys, non-integer resources), then `prepare_config` (merges the provider's defaults)
    and `validate_config` on a deep copy (head type, min/max workers, local provider fields).
    Nothing inside `provider:` or `node_config:` is checked; Ray leaves those blocks open.

    Args:
        path: the YAML file.

    Returns:
        The parsed file as written (not the defaults-merged copy).

    Raises:
        ClusterConfigError: the file is unreadable, not a mapping, or fails either stage.
    """
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterConfigError(f"{path}: cannot read YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    schema_file = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
    try:
        jsonschema.validate(raw, json.loads(schema_file.read_text()))
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "<top level>"
        raise ClusterConfigError(f"{path}: schema ({schema_file.name}) at {where}: {e.message}") from e
    try:
        validate_config(prepare_config(copy.deepcopy(raw)))
    except Exception as e:  # Ray raises ValueError, RuntimeError, ClickException ...
        msg = getattr(e, "message", None) or str(e) or type(e).__name__
        raise ClusterConfigError(f"{path}: ray prepare/validate_config: {msg}") from e
    return raw
