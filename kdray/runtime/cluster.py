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


class ClusterConfigError(ValueError):
    """A cluster launcher YAML that `ray up` would reject."""


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
