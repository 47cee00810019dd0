"""No code runs from data folders: CIFAR python batches are unpickled only when their MD5 is the
published one; anything else is refused before unpickling, with a message naming the file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from kdray.checks import ConfigError, UserError


class _Payload:
    """Unpickling this runs `os.system("touch <marker>")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _payload_archive(root: Path, marker: Path) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for name in names:
        (d / name).write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    return d


def test_payload_cifar_batch_is_rejected_and_never_run(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import kdray.data.cifar as C
    from kdray.config import ExperimentConfig
    from kdray.data import build_dataset

    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)
    marker = tmp_path / "PWNED"
    d = _payload_archive(tmp_path / "data", marker)
    C.read_cifar10.cache_clear()
    cfg = ExperimentConfig().override({"data.dataset": "cifar10", "data.root": str(tmp_path / "data"),
                                       "eval.kind": "top1", "eval.split": "test"})
    with pytest.raises(C.UntrustedFileError) as e:
        build_dataset(cfg.data, "train")
    assert isinstance(e.value, ConfigError | UserError)
    assert str(d / "data_batch_1") in str(e.value) and "c99cafc152244af753f735de768cd75f" in str(e.value)
    assert not marker.exists()


def test_payload_batch_fails_preflight_and_cli_with_exit_2(tmp_path: Path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import kdray.data.cifar as C
    import kdray.runtime.session as session
    from kdray.cli import main

    monkeypatch.delenv("KDRAY_DATA_PATH", raising=False)
    monkeypatch.setattr(session, "ensure_ray", lambda *a, **k: pytest.fail("Ray started"))
    marker = tmp_path / "PWNED"
    _payload_archive(tmp_path / "data", marker)
    C.read_cifar10.cache_clear()
    code = main(["train", "--no-ray", "--out", str(tmp_path / "out"), "--set", "data.dataset=cifar10",
                 "--set", f"data.root={tmp_path / 'data'}", "--set", "eval.kind=top1",
                 "--set", "eval.split=test"])
    err = capsys.readouterr().err
    assert code == 2 and "data_batch_1" in err and "Traceback" not in err
    assert not marker.exists()
