"""MLflow store helpers: tracking URIs, experiments with explicit ids, finding runs by tag,
`episode_records` (a trial's last per-episode accuracies, for the study table's paired Δ) and
`study_table` (`kdray report`: a study's results table read back from its parent run)."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from kdray.config import ConfigError

log = logging.getLogger(__name__)

TAG_STUDY = "kdray.study"
TAG_RUN_KEY = "kdray.run_key"
TAG_ROLE = "kdray.role"  # "study" | "trial": keeps trial runs out of the parent lookup
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT = "mlflow.source.git.commit"
STATUSES = ("FINISHED", "FAILED", "KILLED")
_SQLITE = "sqlite:///"


def default_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`; sqlite paths made absolute.

    Absolute paths matter because Ray workers run with other working directories.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{_SQLITE}mlflow.db"
    if uri.startswith(_SQLITE) and ":memory:" not in uri:
        uri = _SQLITE + str(Path(uri[len(_SQLITE):]).expanduser().resolve())
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """`file://<dir of the sqlite db>/mlartifacts` for sqlite stores, else None (store default).

    Without it, sqlite experiments put artifacts in `./mlruns` of whichever process created them.
    """
    if not tracking_uri.startswith(_SQLITE) or ":memory:" in tracking_uri:
        return None
    db = Path(tracking_uri[len(_SQLITE):]).expanduser().resolve()
    return (db.parent / "mlartifacts").as_uri()


def get_or_create_experiment(client: MlflowClient, name: str,
                             artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (with `artifact_location`, default
    `default_artifact_location`) or restored from deletion when needed."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = artifact_location or default_artifact_location(client.tracking_uri)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # another process created it first
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def resolve_experiment(client: MlflowClient, experiment: str,
                       artifact_location: str | None = None) -> str:
    """Experiment id for `experiment`, given as a name or as an existing id.

    A name wins over an id with the same text; an unknown text is created as a name.
    """
    if client.get_experiment_by_name(experiment) is None and experiment.isdigit():
        try:
            return client.get_experiment(experiment).experiment_id
        except MlflowException:
            pass  # not an id either: create it by name below
    return get_or_create_experiment(client, experiment, artifact_location)


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"tag value {value!r} holds both quote characters")


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str], *,
              running_only: bool = False, newest: bool = False) -> Run | None:
    """The oldest (or newest) active run in the experiment carrying all `tags`."""
    clauses = [f"tags.`{k}` = {_quote(v)}" for k, v in tags.items()]
    if running_only:
        clauses.append("attributes.status = 'RUNNING'")
    order = "DESC" if newest else "ASC"
    runs = client.search_runs([experiment_id], filter_string=" and ".join(clauses),
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=10,
                              order_by=[f"attributes.start_time {order}"])
    if len(runs) > 1:
        log.warning("%d runs match %s; using %s", len(runs), dict(tags), runs[0].info.run_id)
    return runs[0] if runs else None


def reopen(client: MlflowClient, run: Run) -> None:
    """Mark a reused run RUNNING again (a crash or an earlier end left it terminal)."""
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")


def param_value(key: str, value: Any) -> str:
    """MLflow param text: lists/tuples/dicts as JSON, capped at MLflow's length limit."""
    if isinstance(value, (list, tuple)):
        text = json.dumps(list(value), default=str)
    elif isinstance(value, Mapping):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        log.warning("param %s has %d chars; truncated to %d", key, len(text), MAX_PARAM_VAL_LENGTH)
        text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return text


def as_float(value: Any) -> float | None:
    """A finite float from numbers, numpy scalars or 0-dim tensors; None otherwise."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return x if math.isfinite(x) else None


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    return (items[i : i + size] for i in range(0, len(items), size))


def study_table(study: str, tracking_uri: str | None = None) -> str:
    """`results/<study>.md` of the newest parent run of `study` (`kdray report <study>`)."""
    client = MlflowClient(tracking_uri or default_tracking_uri())
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ConfigError(f"no MLflow experiment named {study!r} in {client.tracking_uri}")
    parents = client.search_runs([exp.experiment_id],
                                 f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ConfigError(f"no study run for {study!r} in experiment {exp.experiment_id}")
    path = client.download_artifacts(parents[0].info.run_id, f"results/{study}.md")
    with open(path) as f:
        return f.read()


EPISODES_ARTIFACT = "eval/episodes.parquet"  # the last evaluation's records (TrialTracker.log_eval)
_EPISODE_COLUMNS = ["episode_id", "way", "shot", "classifier", "accuracy"]


def episode_records(client: MlflowClient, run_id: str) -> list[dict] | None:
    """The episode records (episode_id, way, shot, classifier, accuracy) of a run's last
    evaluation, read from its `eval/episodes.parquet`; None when the run logged none (e.g. a
    top-1 evaluation)."""
    if not any(f.path == EPISODES_ARTIFACT for f in client.list_artifacts(run_id, "eval")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, EPISODES_ARTIFACT, tmp)
        return pq.read_table(path, columns=_EPISODE_COLUMNS).to_pylist()
