"""Run identity: a run name in a storage location resumes only its own config.

The Ray run folder `<storage>/<run name>/` and the MLflow run (key `fit/<run name>@<identity>`)
are keyed by the name; `claim_run` records the config beside the checkpoints and refuses the
same name with another config (docs/runtime.md §5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from kdray.config import ExperimentConfig

log = logging.getLogger(__name__)

RUN_RECORD = "kdray_run.json"  # in the Ray run folder: the config and identity of the run


def config_hash(cfg: ExperimentConfig) -> str:
    """8 hex digits of the resolved config (the run-folder key of stages and unnamed runs)."""
    return hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()
                        ).hexdigest()[:8]


def claim_run(cfg: ExperimentConfig, storage_path: str, run_name: str, *,
              fresh: bool = False) -> str:
    """The identity of run `run_name` in `storage_path` (a folder, or a URI Ray's storage takes:
    s3://, gs://, file://): the Ray run folder and the MLflow run are keyed by the name, so a
    name resumes only its own config. A new name (or `fresh`, which deletes the old folder)
    records the config in `<run folder>/kdray_run.json` and gets a new identity (a new MLflow
    run); the same name with the same config resumes; the same name with another config is
    refused."""
    import time

    from pyarrow import fs as pafs

    from kdray.checks import ConfigError

    if "://" in storage_path:
        filesystem, base = pafs.FileSystem.from_uri(storage_path)
    else:
        filesystem, base = pafs.LocalFileSystem(), os.path.abspath(storage_path)
    folder = f"{base.rstrip('/')}/{run_name}"
    shown = f"{storage_path.rstrip('/')}/{run_name}"
    record = f"{folder}/{RUN_RECORD}"

    def kind(path: str):
        return filesystem.get_file_info(path).type

    if fresh and kind(folder) == pafs.FileType.Directory:
        log.info("--fresh: removing %s", shown)
        filesystem.delete_dir(folder)
    if kind(record) == pafs.FileType.File:
        with filesystem.open_input_stream(record) as f:
            rec = json.loads(f.read().decode())
        if rec.get("config") == cfg.to_dict():
            return str(rec.get("identity", ""))
        old = ExperimentConfig.from_dict(rec["config"]).flatten() if rec.get("config") else {}
        new = cfg.flatten()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(
            f"run name {run_name!r} already exists in {storage_path} with another config "
            f"(differs in {diff[:6]}{' ...' if len(diff) > 6 else ''}); a name resumes only its "
            f"own config. Start fresh with another --name, or --fresh (deletes {shown})")
    if kind(folder) == pafs.FileType.Directory and filesystem.get_file_info(
            pafs.FileSelector(folder)) and not fresh:
        raise ConfigError(f"run name {run_name!r}: {shown} holds a run without a kdray record "
                          "(made by an older kdray?); pass another --name, or --fresh to delete it")
    identity = f"{time.strftime('%Y%m%d-%H%M%S')}-{config_hash(cfg)}"
    filesystem.create_dir(folder, recursive=True)
    with filesystem.open_output_stream(record) as f:
        f.write(json.dumps({"run_name": run_name, "identity": identity,
                            "config": cfg.to_dict()}, indent=2).encode())
    return identity


def unique_run_name(cfg: ExperimentConfig) -> str:
    """`run-<UTC time>-<config hash>-<4 random hex>` for a `kdray train` without --name."""
    import secrets
    import time

    return (f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{config_hash(cfg)}-"
            f"{secrets.token_hex(2)}")
