"""The `kdray` console script: every subcommand has --help; bad input exits 2 before Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdray.cli import main


@pytest.mark.parametrize("sub", [[], ["train"], ["study"], ["eval"], ["report"], ["cluster"]])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([*sub, "--help"])
    assert e.value.code == 0
    assert "usage: kdray" in capsys.readouterr().out


def test_bad_key_is_rejected_before_ray(capsys, monkeypatch):
    import kdray.runtime.session as session

    monkeypatch.setattr(session, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    assert main(["train", "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "valid keys there" in err
    assert main(["train", "--method", "nope"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["study", "no_such_study"]) == 2


def test_cluster_validate_exit_codes(tmp_path, capsys):
    """`kdray cluster validate FILE`: 0 and "ok" for a valid file; 2 and the error, no traceback,
    for an invalid or missing one."""
    local = Path(__file__).resolve().parents[1] / "clusters" / "local.yaml"
    assert main(["cluster", "validate", str(local)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nmax_workers: many\nprovider: {type: local}\n")
    assert main(["cluster", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "max_workers" in err and "Traceback" not in err
    assert main(["cluster", "validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read YAML" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "kdray.cli", "cluster", "validate", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "max_workers" in out.stderr


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "kdray.cli", "train", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--workers" in out.stdout


def test_train_no_ray_then_eval_checkpoint(tmp_path, synth_root, capsys):
    import json

    sets = ["model.arch=conv2", f"data.root={synth_root}", "data.synthetic_classes=30",
            "data.synthetic_per_class=20", "data.batch_size=32", "train.epochs=1",
            "train.steps_per_epoch=2", "eval.shots=1", "eval.episodes=10"]
    args = ["train", "--method", "ce", "--no-ray", "--out", str(tmp_path / "run")]
    assert main(args + sum((["--set", s] for s in sets), [])) == 0
    trained = json.loads(capsys.readouterr().out)["metrics"]
    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # same weights, same episode ids -> the same number as the end of training
    assert evaluated["test/acc_5w1s"] == trained["test/acc_5w1s"]


def test_study_list_names_studies_presets_and_cost(capsys):
    """`kdray study --list`: every study, its presets and a rough cost, without running one."""
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    assert "smkd_ablation:" in out and "kd_sweep:" in out
    assert "  smoke: 8 trials (5 rows x 1 seed, 2 searched, 1 val-selected x 1 seed)" in out
    assert "  cifar_fs:" in out and "8 workers x 1 GPU" in out


def test_study_name_help_is_the_studys_own(capsys):
    """`kdray study NAME --help`: that study's flags, presets and defaults, docstring as written."""
    assert main(["study", "smkd_ablation", "--help"]) == 0   # the script's exit code, returned
    out = capsys.readouterr().out
    assert out.startswith("usage: kdray study smkd_ablation")
    assert "--preset {smoke,mini,cifar_fs,fc100,mini_imagenet}" in out and "(default: smoke)" in out
    assert "\n    python studies/smkd_ablation.py --preset smoke" in out  # not reflowed
    assert "presets (rough cost" in out and "--verbose" in out


def test_every_studys_help_prints_its_docstring_as_written():
    """A docstring's example commands are printed as in the source: a shell line continuation
    (`\\` at a line's end) in a non-raw docstring would join two lines in --help."""
    import ast
    from pathlib import Path

    studies = sorted(Path(__file__).parents[1].glob("studies/*.py"))
    assert len(studies) >= 5
    for path in studies:
        src = path.read_text()
        node = ast.parse(src).body[0]
        written = ast.get_source_segment(src, node.value)
        quote = written.index('"""') + 3
        assert ast.get_docstring(ast.parse(src), clean=False) == written[quote:-3], path.name


def _store_with_study(tmp_path, name: str) -> str:
    from mlflow.tracking import MlflowClient

    from kdray.runtime.mlflow_store import get_or_create_experiment
    from kdray.runtime.tracking import start_study_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = get_or_create_experiment(MlflowClient(uri), name)
    run = start_study_run(uri, exp, name)
    MlflowClient(uri).log_text(run, "| table |\n", f"results/{name}.md")
    return uri


def test_report_resolves_names_and_never_creates_a_store(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report", "smkd_ablation"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert list(empty.iterdir()) == []  # nothing left behind
    uri = _store_with_study(tmp_path, "smkd_ablation_smoke")
    assert main(["report", "smkd_ablation", "--tracking-uri", uri]) == 0
    assert "| table |" in capsys.readouterr().out
    assert main(["report", "smkd_ablation", "--preset", "smoke", "--url",
                 "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:5000/#/experiments/" in out and "mlflow ui --backend-store-uri" in out
    assert "?workflowType=machine_learning" in out  # the training layout, not GenAI
    assert main(["report", "dkd_ablation", "--tracking-uri", uri]) == 2
    assert "studies there: smkd_ablation_smoke" in capsys.readouterr().err


def test_experiments_open_in_the_training_layout(tmp_path):
    from mlflow.tracking import MlflowClient

    from kdray.runtime.mlflow_store import TAG_EXPERIMENT_KIND, get_or_create_experiment

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment(get_or_create_experiment(client, "x"))
    assert exp.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"


def test_train_that_fails_in_its_worker_is_one_paragraph_and_exit_1(capsys, monkeypatch):
    """A worker error reaches `kdray train` wrapped by Ray Train: the CLI prints the worker's error
    type and message, where the record is and what to try; exit 1, no traceback."""
    from kdray.runtime import driver
    from kdray.runtime.failures import DeterministicError

    wrapped = RuntimeError("Training failed due to worker errors")  # as Train's WorkerGroupError
    wrapped.worker_failures = {0: DeterministicError(
        "NonFiniteLossError", "non-finite loss at epoch 0, step 2: {'loss': nan}", "Traceback ...")}
    seen = {}

    def fake_fit(cfg, **kw):
        seen.update(kw)
        return driver.RunResult({}, [], None, None, error=wrapped)

    monkeypatch.setattr(driver, "fit", fake_fit)
    assert main(["train", "--name", "nanrun"]) == 1
    err = capsys.readouterr().err
    assert seen["raise_on_error"] is False
    assert "error: run 'nanrun' failed: NonFiniteLossError: non-finite loss at epoch 0" in err, err
    assert "error.txt" in err and "optim.lr" in err and "Traceback" not in err
