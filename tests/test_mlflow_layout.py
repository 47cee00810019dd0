"""What MLflow shows of a study, read back with MlflowClient: one step axis per metric key
(step values under train_step/, epoch means under train/, both at the global step), CIs under
ci/, no duplicate classifier keys; readable run names and kdray.* tags; the study run's note and
row metrics."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from kdray.config import ExperimentConfig
from kdray.runtime.metric_keys import epoch_metrics, step_metrics
from kdray.runtime.mlflow_store import get_or_create_experiment
from kdray.runtime.study_report import describe_study_run, row_metrics, slug
from kdray.runtime.tracking import TrialTracker, start_study_run
from kdray.study import Row, Study
from kdray.study.progress import run_name, run_tags, trial_index


def test_metric_keys_one_axis_one_meaning():
    assert step_metrics({"train/loss": 1.0, "train/lr": 0.1}) == {"train_step/loss": 1.0,
                                                                   "train_step/lr": 0.1}
    m = {"epoch": 1, "train/loss": 2.0, "val/acc_5w1s": 30.0, "val/acc_5w1s_ci95": 1.0,
         "val/acc_5w1s_proto": 30.0, "val/acc_5w1s_proto_ci95": 1.0,
         "val/acc_5w1s_logreg": 31.0, "val/acc_5w1s_logreg_ci95": 1.1}
    assert epoch_metrics(m) == {"epoch": 1, "train/loss": 2.0, "val/acc_5w1s": 30.0,
                                "ci/val/acc_5w1s": 1.0, "val/acc_5w1s_logreg": 31.0,
                                "ci/val/acc_5w1s_logreg": 1.1}


def test_trial_runs_read_back(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = get_or_create_experiment(client, "s_smoke")
    parent = start_study_run(uri, exp, "s_smoke")
    cfg = ExperimentConfig(method="ce").override({"seed": 1})
    params = {"row": "+ supervised [CLS] (Eq. 3)", "seed": 1}
    tr = TrialTracker(uri, exp, parent, run_key="k", tags=run_tags("grid", params, cfg),
                      run_name=run_name("grid", params, trial_index("x-t001-s1")))
    for step, loss in ((0, 3.0), (10, 2.0)):
        tr.log_metrics(step_metrics({"train/loss": loss}), step)
    tr.log_metrics(epoch_metrics({"train/loss": 2.5, "test/acc_5w1s": 30.0,
                                  "test/acc_5w1s_ci95": 1.0}), 20)
    run = client.get_run(tr.run_id)
    assert run.info.run_name == "+ supervised [CLS] (Eq. 3) · s1"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert {k: v for k, v in run.data.tags.items() if k.startswith("kdray.") and
            k not in ("kdray.run_key", "kdray.role")} == {
        "kdray.row": "+ supervised [CLS] (Eq. 3)", "kdray.seed": "1", "kdray.phase": "grid",
        "kdray.split": "test", "kdray.method": "ce"}
    steps = [(m.step, m.value) for m in client.get_metric_history(tr.run_id, "train_step/loss")]
    assert sorted(steps) == [(0, 3.0), (10, 2.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(tr.run_id, "train/loss")] == \
        [(20, 2.5)]
    assert set(run.data.metrics) == {"train_step/loss", "train/loss", "test/acc_5w1s",
                                     "ci/test/acc_5w1s"}
    search = run_tags("search", {"method_cfg.w": 0.5}, cfg.override({"eval.split": "val"}))
    assert search["kdray.phase"] == "search" and search["kdray.split"] == "val"
    assert run_tags("best", {"seed": 0}, cfg)["kdray.phase"] == "final"


def test_study_run_note_and_row_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = get_or_create_experiment(client, "s_smoke")
    parent = start_study_run(uri, exp, "s_smoke")
    study = Study(name="s_smoke", base=ExperimentConfig(method="ce"), metric="acc_5w1s",
                  rows=(Row("a"), Row("+ b (Eq. 3)")), description="What it tests.",
                  columns=(("5w1s", "acc_5w1s"), ("5w5s", "acc_5w5s")))
    rows = [{"label": "a", "seed": 0, "split": "test", "status": "finished",
             "metrics": {"acc_5w1s": 30.0, "acc_5w5s": 40.0}},
            {"label": "+ b (Eq. 3)", "seed": 0, "split": "test", "status": "error",
             "metrics": {}}]
    assert slug("+ supervised [CLS] (Eq. 3)") == "supervised_CLS_Eq_3"
    assert row_metrics(study, rows) == {"row/a/s0/test/acc_5w1s": 30.0,
                                        "row/a/s0/test/acc_5w5s": 40.0}
    describe_study_run(study, client, parent, rows, "# s\n\n- x: y\n\n| a | b |\n")
    run = client.get_run(parent)
    # the note says which split the rows were scored on (the table's paragraph), then the table
    assert run.data.tags["mlflow.note.content"] == (
        "What it tests. Rows are scored on test; no search.\n\n| a | b |")
    assert run.data.metrics == {"row/a/s0/test/acc_5w1s": 30.0, "row/a/s0/test/acc_5w5s": 40.0}
