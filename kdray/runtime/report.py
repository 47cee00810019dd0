"""`kdray report`: a study's results table, read back from its MLflow parent run."""

from __future__ import annotations

from kdray.config import ConfigError


def study_table(study: str, tracking_uri: str | None = None) -> str:
    import mlflow

    from kdray.runtime.tracking import default_tracking_uri

    client = mlflow.MlflowClient(tracking_uri or default_tracking_uri())
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ConfigError(f"no MLflow experiment named {study!r} in {client.tracking_uri}")
    parents = client.search_runs([exp.experiment_id],
                                 f"tags.`kdray.study` = '{study}' and tags.`kdray.role` = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ConfigError(f"no study run for {study!r} in experiment {exp.experiment_id}")
    path = client.download_artifacts(parents[0].info.run_id, f"results/{study}.md")
    with open(path) as f:
        return f.read()
