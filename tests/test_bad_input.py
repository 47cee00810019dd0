"""Bad input, as a new user types it: every case exits 2 with one message naming the key, file or
flag, shows no traceback, and never reaches Ray (its start is patched to fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdray.cli import main

REPO = Path(__file__).resolve().parents[1]

# (id, argv, words the message must contain); {tmp}: this test's folder, {data}: the shared
# generated-data root; files under {tmp} are made by `_files`.
CASES = [
    # kdray train: config keys and values
    ("train-unknown-key", ["train", "--set", "optim.lrr=1"], ["optim.lrr"]),
    ("train-unknown-method", ["train", "--method", "nope"], ["nope", "choose one of"]),
    ("train-lr-nan", ["train", "--set", "optim.lr=nan"], ["optim.lr", "finite"]),
    ("train-lr-inf", ["train", "--set", "optim.lr=inf"], ["optim.lr", "finite"]),
    ("train-tau-inf", ["train", "--method", "kd", "--set", "method_cfg.tau=inf"], ["method_cfg.tau"]),
    ("train-tau-nan", ["train", "--method", "kd", "--set", "method_cfg.tau=nan"], ["method_cfg.tau"]),
    ("train-lr-text", ["train", "--set", "optim.lr=abc"], ["optim.lr", "number"]),
    ("train-set-no-equals", ["train", "--set", "optim.lr"], ["--set", "key=value"]),
    ("train-epochs-0", ["train", "--set", "train.epochs=0"], ["train.epochs"]),
    ("train-seed-negative", ["train", "--set", "seed=-1"], ["seed"]),
    ("train-bool-bad", ["train", "--set", "data.download=maybe"], ["data.download", "true/false"]),
    ("train-workers-0", ["train", "--workers", "0"], ["--workers", ">= 1"]),
    ("train-workers-text", ["train", "--workers", "two"], ["--workers"]),
    ("train-unknown-flag", ["train", "--wrokers", "2"], ["--wrokers"]),
    # --config
    ("train-config-missing", ["train", "--config", "{tmp}/none.json"], ["--config", "none.json"]),
    ("train-config-not-json", ["train", "--config", "{tmp}/bad.json"], ["bad.json", "not valid JSON"]),
    ("train-config-list", ["train", "--config", "{tmp}/list.json"], ["list.json", "list"]),
    ("train-config-bad-key", ["train", "--config", "{tmp}/key.json"], ["key.json", "bogus"]),
    # data
    ("train-dataset-unknown", ["train", "--set", "data.dataset=nope"], ["data.dataset", "nope"]),
    ("train-cifar-missing", ["train", "--set", "data.dataset=cifar10", "--set", "eval.kind=top1",
                             "--set", "eval.split=test", "--set", "data.root={tmp}/nodata"],
     ["cifar10", "nodata", "To get it"]),
    ("train-split-unknown", ["train", "--set", "eval.split=nope"], ["eval.split", "nope"]),
    ("train-batch-geometry", ["train", "--set", "data.batch_size=3", "--workers", "2"],
     ["data.batch_size", "num_workers"]),
    # model and checkpoints
    ("train-arch-unknown", ["train", "--set", "model.arch=no_such_net"], ["model.arch", "no_such_net"]),
    ("train-init-missing", ["train", "--set", "train.init_from={tmp}/none.pt"], ["train.init_from"]),
    ("train-init-garbage", ["train", "--set", "train.init_from={tmp}/garbage.pt"],
     ["train.init_from", "garbage.pt"]),
    ("train-init-other-arch", ["train", "--set", "train.init_from={tmp}/other_arch.pt"],
     ["train.init_from", "other_arch.pt", "does not fit"]),
    ("train-teacher-missing", ["train", "--method", "kd", "--set", "model.teacher_ckpt={tmp}/t.pt"],
     ["teacher", "t.pt"]),
    # resources and locations
    ("train-gpu-without-gpu", ["train", "--set", "resources.gpus_per_worker=1"],
     ["resources.gpus_per_worker", "--address"]),
    ("train-too-many-cpus", ["train", "--set", "data.batch_size=512", "--workers", "512"],
     ["resources.num_workers", "CPUs"]),
    ("train-tracking-down", ["train", "--tracking-uri", "http://127.0.0.1:9"], ["--tracking-uri", "127.0.0.1:9"]),
    ("train-storage-is-file", ["train", "--storage-path", "{tmp}/bad.json/x"], ["--storage-path", "bad.json"]),
    ("train-storage-unwritable", ["train", "--storage-path", "/proc/kdray-runs"], ["--storage-path", "/proc"]),
    ("train-tracking-unwritable", ["train", "--tracking-uri", "sqlite:////proc/kdray/m.db"], ["--tracking-uri"]),
    ("train-name-other-config", ["train", "--name", "taken", "--set", "optim.lr=0.05"],
     ["taken", "another config", "--fresh"]),
    ("train-fresh-without-name", ["train", "--fresh"], ["--fresh", "--name"]),
    ("train-no-ray-nan", ["train", "--no-ray", "--out", "{tmp}/out", "--set", "optim.lr=nan"], ["optim.lr"]),
    # kdray eval
    ("eval-missing", ["eval", "--checkpoint", "{tmp}/none.pt"], ["--checkpoint", "none.pt"]),
    ("eval-not-a-checkpoint", ["eval", "--checkpoint", "{tmp}/garbage.pt"], ["--checkpoint", "garbage.pt"]),
    ("eval-truncated", ["eval", "--checkpoint", "{tmp}/truncated.pt"], ["--checkpoint", "truncated.pt"]),
    ("eval-state-dict", ["eval", "--checkpoint", "{tmp}/state_dict.pt"], ["state_dict", "teacher_ckpt"]),
    ("eval-empty-dir", ["eval", "--checkpoint", "{tmp}/nodata"], ["--checkpoint", "checkpoint.pt"]),
    # kdray report
    ("report-no-store", ["report", "nope", "--tracking-uri", "sqlite:///{tmp}/r.db"], ["r.db", "no MLflow store"]),
    ("report-tracking-down", ["report", "x", "--tracking-uri", "http://127.0.0.1:9"], ["--tracking-uri"]),
    # kdray cluster validate
    ("cluster-missing", ["cluster", "validate", "{tmp}/none.yaml"], ["none.yaml"]),
    ("cluster-bad-value", ["cluster", "validate", "{tmp}/bad.yaml"], ["max_workers"]),
    ("cluster-not-mapping", ["cluster", "validate", "{tmp}/list.yaml"], ["list.yaml", "mapping"]),
    # kdray study and the study scripts' shared command line
    ("study-unknown", ["study", "no_such_study"], ["no_such_study", "kd_sweep"]),
    ("study-seeds-text", ["study", "kd_sweep", "--seeds", "a,b"], ["--seeds", "comma-separated integers"]),
    ("study-seeds-negative", ["study", "smkd_ablation", "--seeds=-1"], ["--seeds", ">= 0"]),
    ("study-seeds-repeated", ["study", "mkd_ablation", "--seeds", "1,1"], ["--seeds", "repeated"]),
    ("study-preset-unknown", ["study", "kd_sweep", "--preset", "nope"], ["--preset", "nope"]),
    ("study-lr-nan", ["study", "kd_sweep", "--set", "optim.lr=nan"], ["optim.lr", "finite"]),
    ("study-tau-inf", ["study", "dkd_ablation", "--set", "method_cfg.tau=inf"], ["method_cfg.tau"]),
    ("study-lr-negative", ["study", "cskd_ablation", "--set", "optim.lr=-1"], ["optim.lr"]),
    ("study-unknown-key", ["study", "sskd_ablation", "--set", "nope.key=1"], ["nope.key"]),
    ("study-workers-0", ["study", "kd_sweep", "--workers-per-trial", "0"], ["--workers-per-trial"]),
    ("study-samples-text", ["study", "m2sd_ablation", "--num-samples", "x"], ["--num-samples"]),
    ("study-gpus-nan", ["study", "kd_sweep", "--gpus-per-worker", "nan"], ["--gpus-per-worker"]),
    ("study-paper-data-missing", ["study", "smkd_ablation", "--preset", "cifar_fs", "--data-root",
                                  "{tmp}/nodata"], ["cifar", "nodata"]),
    ("study-coco-annotations-broken", ["study", "mkd_ablation", "--data-root", "{tmp}/badcoco"],
     ["coco128", "badcoco", "cannot be read"]),
    ("study-tracking-down", ["study", "kd_sweep", "--no-search", "--data-root", "{data}",
                             "--tracking-uri", "http://127.0.0.1:9"], ["--tracking-uri"]),
]


def _files(tmp: Path, storage: Path) -> None:
    from kdray.config import ExperimentConfig
    from kdray.methods import build_method

    (tmp / "nodata").mkdir()
    (tmp / "bad.json").write_text("{not json")
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "key.json").write_text(json.dumps({"bogus": 1}))
    (tmp / "garbage.pt").write_text("this is not a checkpoint")
    (tmp / "bad.yaml").write_text("cluster_name: x\nmax_workers: many\nprovider: {type: local}\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    other = ExperimentConfig().override({"model.arch": "conv4"})
    method = build_method(other, 8)
    sd = {k: v for k, v in method.student.state_dict().items()}
    torch.save({"student.weight": torch.zeros(3)}, tmp / "state_dict.pt")
    torch.save({"model": {"student": {"bogus.weight": torch.zeros(2)}}, "config": other.to_dict()},
               tmp / "other_arch.pt")
    torch.save({"model": {"student": sd}, "config": other.to_dict()}, tmp / "full.pt")
    data = (tmp / "full.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    coco = tmp / "badcoco" / "coco128"
    (coco / "train2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_train2017.json").write_text("{\"images\": [")
    taken = storage / "taken"
    taken.mkdir(parents=True)
    (taken / "kdray_run.json").write_text(json.dumps(
        {"run_name": "taken", "identity": "x", "config": ExperimentConfig().to_dict()}))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("bad_input")
    storage = tmp / "storage"
    _files(tmp, storage)
    return tmp, storage


def _no_ray(*a, **k):
    raise AssertionError("Ray was started by a bad input")


@pytest.mark.parametrize(("argv", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_before_ray(argv, needles, files, synth_root, capsys, monkeypatch):
    import ray

    import kdray.runtime.session as session

    tmp, storage = files
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(ray, "init", _no_ray)
    monkeypatch.setattr(session, "ensure_ray", _no_ray)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("KDRAY_STORAGE_PATH", str(storage))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)
    args = [a.replace("{tmp}", str(tmp)).replace("{data}", synth_root) for a in argv]
    if args[0] == "train" and not any(a.startswith("data.root=") for a in args):
        args += ["--set", f"data.root={synth_root}"]
    try:
        code = main(args)
    except SystemExit as e:  # argparse: usage + error, exit 2
        code = e.code
    out, err = capsys.readouterr()
    text = out + err
    assert code == 2, text
    assert "Traceback" not in text
    for word in needles:
        assert word.replace("{tmp}", str(tmp)) in text, (word, text)


def test_case_count():
    assert len(CASES) >= 40


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr("kdray.runtime.session.ensure_ray", _no_ray)
    assert main(["train", "--set", "optim.lr=nan", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "optim.lr" in err


@pytest.mark.parametrize("argv", [
    ["-m", "kdray.cli", "train", "--set", "optim.lr=nan"],
    ["studies/kd_sweep.py", "--seeds", "a,b"],
    ["studies/smkd_ablation.py", "--set", "method_cfg.w_patch=inf"],
], ids=["cli", "script-seeds", "script-inf"])
def test_subprocess_exit_code_2_without_traceback(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "error" in out.stderr


@pytest.mark.parametrize(("dataset", "needles"), [
    ("cifar100", ["cifar-100-python.tar.gz", "cifar-100-python/"]),
    ("omniglot", ["images_background.zip", "images_evaluation.zip", "omniglot/"]),
], ids=["cifar100", "omniglot"])
def test_download_without_network_is_a_clear_error(dataset, needles, tmp_path, capsys,
                                                   monkeypatch):
    """`--download` where the network is unreachable (every request goes to a closed local port
    through the proxy variables urllib honours): exit 2, the dataset, the folder, the URL to fetch
    by hand and where to unpack it; no traceback, no Ray."""
    import ray

    monkeypatch.setattr(ray, "init", _no_ray)
    monkeypatch.setattr("kdray.runtime.session.ensure_ray", _no_ray)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)
    root = tmp_path / "data"
    code = main(["train", "--set", f"data.dataset={dataset}", "--set", f"data.root={root}",
                 "--set", "eval.kind=none", "--download"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for word in ["data.download", repr(dataset), str(root), "by hand", *needles]:
        assert word in err, (word, err)
