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
