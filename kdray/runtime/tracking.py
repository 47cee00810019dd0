"""MLflow tracking: experiments, the study parent run and one resumable child run per trial.

Only `MlflowClient` with explicit experiment/run ids: the fluent API exports and reads
`MLFLOW_EXPERIMENT_ID` (inherited by Ray workers) and puts nested runs in experiment 0 (docs/runtime.md
§P5, §D.3). Runs are found again by tags so restarts append to them (docs/runtime.md §D.4): a study parent by
`kdray.study`, a trial by `kdray.run_key` under its parent. Only rank 0 logs (docs/runtime.md §D.1); other ranks
get a `TrialTracker(..., enabled=False)`, whose methods do nothing.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from kdray.eval.table import Table
from kdray.runtime.mlflow_store import (
    STATUSES,
    TAG_GIT,
    TAG_PARENT,
    TAG_ROLE,
    TAG_RUN_KEY,
    TAG_STUDY,
    as_float,
    chunks,
    find_run,
    param_value,
    reopen,
    resolve_experiment,
)
from kdray.study import artifacts

log = logging.getLogger(__name__)

class RunLogger:
    """Logging bound to one MLflow run; every method is a no-op when `run_id` is None."""

    def __init__(self, client: MlflowClient | None = None, run_id: str | None = None) -> None:
        self._client = client
        self._run_id = run_id
        self._params: dict[str, str] | None = None  # what the run already holds (lazy)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def enabled(self) -> bool:
        return self._run_id is not None

    def log_params(self, flat: Mapping[str, Any]) -> int:
        """Log flattened params, skipping keys the run already holds; return how many were new.

        A key re-logged with the same value (a resumed run) is skipped; one with a different value
        is skipped with a warning, because MLflow params are immutable.
        """
        if not self.enabled:
            return 0
        if self._params is None:
            self._params = dict(self._client.get_run(self._run_id).data.params)
        new = []
        for key, value in flat.items():
            text, old = param_value(key, value), self._params.get(key)
            if old is None:
                new.append(Param(key, text))
            elif old != text:
                log.warning("param %s is %r in run %s; not changing it to %r",
                            key, old, self._run_id, text)
        for chunk in chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)
            self._params.update({p.key: p.value for p in chunk})
        return len(new)

    def set_tag(self, key: str, value: Any) -> None:
        """Set (or overwrite) one run tag."""
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; values are stringified like params."""
        if not self.enabled:
            return
        items = [RunTag(k, param_value(k, v)) for k, v in tags.items()]
        for chunk in chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=chunk)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> int:
        """Log finite numeric metrics at `step` with `log_batch`; return how many were logged."""
        if not self.enabled:
            return 0
        stamp = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            x = as_float(value)
            if x is None:
                log.warning("metric %s=%r at step %d is not a finite number; skipped",
                            key, value, step)
            else:
                batch.append(Metric(key, x, stamp, int(step)))
        for chunk in chunks(batch, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk)
        return len(batch)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one local file into the run's artifact directory `artifact_path`."""
        if self.enabled:
            self._client.log_artifact(self._run_id, str(path), artifact_path)

    def log_dir(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload the contents of `local_dir` into the artifact directory `artifact_path`."""
        if self.enabled:
            self._client.log_artifacts(self._run_id, str(local_dir), artifact_path)

    def _log_written(self, artifact_file: str, write) -> Any:
        """Call `write(local_path)` in a temp dir and upload the file as `artifact_file`."""
        dirname, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            out = write(Path(tmp) / name)
            self.log_file(Path(tmp) / name, dirname or None)
        return out

    def log_dict_json(self, obj: Any, artifact_path: str) -> None:
        """Write `obj` as JSON to the artifact file `artifact_path` (e.g. `config.json`)."""
        if self.enabled:
            self._log_written(artifact_path, lambda p: artifacts.write_json(obj, p))

    def log_eval(self, result_records: Mapping[str, list[dict]], summary: Mapping[str, Any],
                 epoch: int) -> dict | None:
        """Log the evaluation tables to `eval/` (latest) and `eval/epoch_XXX/`.

        Every row list of `result_records` (`{name: [record, ...]}`) goes into `episodes.parquet`
        and `summary.json` as episode records (see `kdray.study.artifacts`); a
        `kdray.eval.table.Table` is also written as `<name>.parquet` and, with a plot,
        `<name>.png`. `summary` (the evaluator's own numbers) is kept as `reported` in
        `summary.json`. Returns the summary written, or None when disabled.
        """
        if not self.enabled:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            artifacts.write_episodes_parquet(result_records, Path(tmp) / "episodes.parquet",
                                             epoch=epoch)
            written = artifacts.write_summary_json(result_records, Path(tmp) / "summary.json",
                                                   epoch=epoch, reported=summary)
            for name, rows in result_records.items():
                if isinstance(rows, Table) and rows:
                    pq.write_table(rows.arrow(epoch), str(Path(tmp) / f"{name}.parquet"))
                    rows.plot(Path(tmp) / f"{name}.png")
            self.log_dir(tmp, "eval")  # latest, overwritten each evaluation
            self.log_dir(tmp, f"eval/epoch_{int(epoch):03d}")
        episodes = artifacts.flatten_records(
            {k: v for k, v in result_records.items() if not isinstance(v, Table)})
        if episodes:  # the UI previews a table artifact (the parquet files it only lists)
            table = {c: [r.get(c) for r in episodes]
                     for c in ("episode_id", "way", "shot", "queries", "classifier")}
            table["accuracy (%)"] = [100.0 * float(r["accuracy"]) for r in episodes]
            # one file per evaluation: log_table appends to a file that exists
            self._client.log_table(self._run_id, table,
                                   artifact_file=f"eval/epoch_{int(epoch):03d}/episodes_table.json")
        return written

    def log_curves(self, history: list[dict], artifact_path: str = "plots/curves.png") -> None:
        """PNG of the `train/*`, `val/*` and `test/*` metrics in `history` (one dict per epoch),
        titled with the run's name and split (`artifacts.plot_curves`)."""
        if self.enabled:
            title = getattr(self, "title", "")
            self._log_written(artifact_path, lambda p: artifacts.plot_curves(history, p, title))

    def log_episode_hist(self, records: Mapping[str, list[dict]] | Iterable[dict],
                         artifact_path: str = "plots/episode_hist.png") -> None:
        """PNG histogram of episode accuracy (%) per (way, shot, classifier)."""
        if self.enabled:
            title = getattr(self, "title", "")
            self._log_written(artifact_path,
                              lambda p: artifacts.plot_episode_hist(records, p, title))

    def log_environment(self, extra: Mapping[str, Any] | None = None) -> dict | None:
        """Log `environment.json` (versions, git SHA, host, devices, `extra`); tag the git SHA."""
        if not self.enabled:
            return None
        info = artifacts.environment_info(extra)
        self.log_dict_json(info, "environment.json")
        if info["git_sha"]:
            self.set_tags({TAG_GIT: info["git_sha"]})
        return info

    def set_terminated(self, status: str = "FINISHED") -> None:
        """End the run with status FINISHED, FAILED or KILLED."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self.enabled:
            self._client.set_terminated(self._run_id, status)


class TrialTracker(RunLogger):
    """Child run of one trial, found again by (`parent_run_id`, `run_key`) so restarts append.

    Args:
        tracking_uri: store URI (`default_tracking_uri()` on the driver, passed down).
        experiment_id: explicit experiment id (never taken from the environment).
        parent_run_id: study run id (tag `mlflow.parentRunId`); None for a top-level run.
        run_key: stable across restarts, e.g. the Tune trial id or `<study>/<trial-name>`.
        run_name: display name (tag `mlflow.runName`) of a newly created run.
        enabled: False gives a no-op tracker (ranks != 0). `tags`: extra tags to set.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str | None = None, *,
                 run_key: str, run_name: str, enabled: bool = True,
                 tags: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.resumed = False
        # the last step of the last epoch a run found again holds (-1: none): not logged twice
        self.recorded_step = -1
        split = (tags or {}).get("kdray.split")  # the pictures' title: run name and split
        self.title = run_name + (f" · {split} split" if split else "")
        if not enabled:
            return
        client = MlflowClient(tracking_uri)
        key_tags = {TAG_RUN_KEY: run_key, TAG_ROLE: "trial"}
        if parent_run_id:
            key_tags[TAG_PARENT] = parent_run_id
        run = find_run(client, experiment_id, key_tags)
        if run is None:
            run = client.create_run(experiment_id, tags=key_tags, run_name=run_name)
        else:
            self.resumed = True
            reopen(client, run)
            epochs = client.get_metric_history(run.info.run_id, "epoch")
            self.recorded_step = max((int(m.step) for m in epochs), default=-1)
        self._client, self._run_id = client, run.info.run_id
        if tags:
            self.set_tags(tags)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> int:
        """As `RunLogger.log_metrics`, but a run found again skips the steps up to the end of the
        last epoch it recorded. A restart can resume from an earlier checkpoint than the last
        epoch recorded (docs/runtime.md §P10: the last report was not consumed before the
        interruption) and train that epoch again; exact resume gives the same values, and MLflow
        would keep both points."""
        if step <= self.recorded_step:
            return 0
        return super().log_metrics(metrics, step)


class StudyRun(RunLogger):
    """Parent run of a study, reused while unfinished (or always with `resume=True`).

    Args:
        tracking_uri: store URI. experiment: name (created when missing) or id.
        study_name: stable study identity, stored in tag `kdray.study`.
        params, tags: flattened study-level params (e.g. the base config) and extra tags.
        resume: reuse the newest parent with this study name even if it already ended.
        artifact_location: used only when the experiment is created.
    """

    def __init__(self, tracking_uri: str, experiment: str, study_name: str, *,
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                 resume: bool = False, artifact_location: str | None = None) -> None:
        client = MlflowClient(tracking_uri)
        self.experiment_id = resolve_experiment(client, str(experiment), artifact_location)
        key_tags = {TAG_ROLE: "study", TAG_STUDY: study_name}
        run = find_run(client, self.experiment_id, key_tags, running_only=not resume,
                        newest=True)
        self.resumed = run is not None
        if run is None:
            run = client.create_run(self.experiment_id, tags=key_tags, run_name=study_name)
        else:
            reopen(client, run)
        super().__init__(client, run.info.run_id)
        if tags:
            self.set_tags(tags)
        if params:
            self.log_params(params)


def start_study_run(tracking_uri: str, experiment: str, study_name: str,
                    params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                    resume: bool = False) -> str:
    """Start or find the parent run of `study_name` in `experiment` (name or id); return its id."""
    run = StudyRun(tracking_uri, experiment, study_name, params=params, tags=tags, resume=resume)
    return run.run_id
