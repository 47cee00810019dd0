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
#: experiment tag the MLflow UI (3.x) reads to choose its layout; this value = the classic
#: training view (runs table, charts), not the GenAI one (traces, judges, prompts)
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
UI_BASE = "http://127.0.0.1:5000"


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
            return client.create_experiment(name, artifact_location=location,
                                            tags={TAG_EXPERIMENT_KIND: TRAINING_KIND})
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # another process created it first
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if TAG_EXPERIMENT_KIND not in exp.tags:  # made before kdray set it
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, TRAINING_KIND)
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


def store_exists(uri: str) -> bool:
    """Whether the tracking store at `uri` is there already (a server is assumed to be)."""
    if uri.startswith(_SQLITE):
        return ":memory:" in uri or Path(uri[len(_SQLITE):]).is_file()
    if uri.startswith("file:"):
        from urllib.parse import urlparse

        return Path(urlparse(uri).path).is_dir()
    if "://" not in uri:
        return Path(uri).is_dir()
    return True


def open_store(tracking_uri: str | None = None) -> MlflowClient:
    """A client of an existing store; a missing local store is an error, never created."""
    uri = tracking_uri or default_tracking_uri()
    if not store_exists(uri):
        raise ConfigError(f"no MLflow store at {uri}: run a study first (it creates one), or "
                          "pass --tracking-uri / set MLFLOW_TRACKING_URI")
    return MlflowClient(uri)


def study_names(client: MlflowClient) -> list[str]:
    """The studies in the store: experiments holding a kdray study run."""
    names = []
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], f"tags.`{TAG_ROLE}` = 'study'", max_results=1):
            names.append(exp.name)
    return sorted(names)


def resolve_study(client: MlflowClient, name: str, preset: str | None = None) -> str:
    """The study's experiment name: `name` itself, `<name>_<preset>`, or the one study whose name
    starts with `<name>_`; otherwise a ConfigError listing the studies in the store."""
    known = study_names(client)
    if preset and f"{name}_{preset}" in known:
        return f"{name}_{preset}"
    if not preset and name in known:
        return name
    close = [k for k in known if k.startswith(f"{name}_")]
    if not preset and len(close) == 1:
        return close[0]
    if not preset and close:
        raise ConfigError(f"{name!r} has several presets here: {', '.join(close)}; "
                          "pass --preset or the full name")
    wanted = f"{name}_{preset}" if preset else name
    raise ConfigError(f"no study {wanted!r} in {client.tracking_uri}; studies there: "
                      f"{', '.join(known) or 'none'}")


def _study_parent(client: MlflowClient, study: str):
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ConfigError(f"no MLflow experiment named {study!r} in {client.tracking_uri}")
    parents = client.search_runs([exp.experiment_id],
                                 f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ConfigError(f"no study run for {study!r} in experiment {exp.experiment_id}")
    return exp, parents[0]


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment's runs table (or of one run): the tracking server
    itself for an http(s) store, else `mlflow ui`'s default address. The page opens in the
    "Model training" layout (`?workflowType=machine_learning`; MLflow 3's UI otherwise starts a
    new browser in its GenAI layout, whatever the experiment's kind tag says)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) \
        else UI_BASE
    return (f"{base}/#/experiments/{experiment_id}/" + (f"runs/{run_id}" if run_id else "runs")
            + "?workflowType=machine_learning")


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI (None for a tracking server)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri} --port 5000"


def study_url(client: MlflowClient, study: str) -> str:
    """`kdray report --url`: the study's runs table in the MLflow UI and how to serve it."""
    exp, parent = _study_parent(client, study)
    lines = [f"runs:       {ui_url(client.tracking_uri, exp.experiment_id)}",
             f"study run:  {ui_url(client.tracking_uri, exp.experiment_id, parent.info.run_id)}"]
    cmd = ui_command(client.tracking_uri)
    if cmd:
        lines.append(f"serve with: {cmd}")
    return "\n".join(lines)


def study_table(study: str, tracking_uri: str | None = None,
                client: MlflowClient | None = None) -> str:
    """`results/<study>.md` of the newest parent run of `study` (`kdray report <study>`)."""
    client = client or open_store(tracking_uri)
    _, parent = _study_parent(client, study)
    path = client.download_artifacts(parent.info.run_id, f"results/{study}.md")
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
