"""A few-shot run on real data: Omniglot (Vinyals split) from ../shared/data, no Ray."""

from __future__ import annotations

import pytest

from kdray.config import ExperimentConfig
from kdray.engine.loop import Callbacks
from kdray.engine.runner import train


@pytest.mark.slow
def test_omniglot_fewshot_run_beats_chance(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("KDRAY_DATA_PATH", str(shared_data))
    monkeypatch.setenv("KDRAY_CACHE_DIR", str(tmp_path / "cache"))
    cfg = ExperimentConfig().override({
        "method": "ce", "data.dataset": "omniglot", "data.root": str(tmp_path / "data"),
        "data.image_size": 28, "data.augment": "none", "data.batch_size": 64,
        "model.arch": "conv4", "train.epochs": 1, "train.steps_per_epoch": 30,
        "optim.lr": 3e-3, "eval.split": "val", "eval.ways": 5, "eval.shots": "1,5",
        "eval.queries": 5, "eval.episodes": 100, "eval.classifiers": "proto,logreg"})
    seen = []
    res = train(cfg, callbacks=Callbacks(on_log=lambda m, s: seen.append(m["train/loss"])))
    m = res.metrics
    # 5-way chance is 20%. 30 CE steps over 4112 training classes barely move the loss, so this is
    # a pipeline check on real data (loading, rotations, episodes, both classifiers), not a
    # learning benchmark (SMKD's Omniglot test is the learning one).
    assert m["val/acc_5w1s_proto"] > 35.0, m
    assert m["val/acc_5w5s_proto"] > m["val/acc_5w1s_proto"] + 5, m
    assert m["val/acc_5w5s_logreg"] > 40.0, m
    assert 0 < m["val/acc_5w1s_ci95"] < 5.0
    assert len(seen) == 30 // cfg.train.log_every and all(v == v for v in seen)
