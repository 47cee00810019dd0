"""A tiny searched study for test_interrupts.py (a subprocess, so it can be interrupted or
killed): argv[1] the data root, argv[2] a checkpoint whose weights are NaN (the study is then
one row `nan` that starts from it, so its first loss is not finite) or "-" (rows a, b, c).
With KDRAY_TEST_STAGE=1 the study first trains a long stage `teach` (to be interrupted)."""

import os
import sys

from kdray.config import ExperimentConfig
from kdray.runtime.cli_study import main
from kdray.runtime.driver import study_stage
from kdray.search import Float
from kdray.study import Row, Study

ROOT = sys.argv.pop(1)
NAN_CKPT = sys.argv.pop(1)


def build(preset: str) -> Study:
    base = ExperimentConfig(method="ce").override({
        "data.root": ROOT, "model.arch": "conv2", "data.batch_size": 32, "train.epochs": 2,
        "train.steps_per_epoch": 3, "eval.shots": "1", "eval.episodes": 20,
        "data.synthetic_classes": 30, "data.synthetic_per_class": 20})
    rows = [Row("a", {}), Row("b", {"optim.lr": 3e-3}), Row("c", {"optim.lr": 1e-4})]
    if NAN_CKPT != "-":
        rows = [Row("nan", {"train.init_from": NAN_CKPT})]
    return Study(name="intr", base=base, metric="acc_5w1s", rows=tuple(rows),
                 space={"optim.lr": Float(1e-4, 3e-2, log=True)}, search="random",
                 num_samples=2, grace_period=1, reduction_factor=2,
                 columns=(("5w1s", "acc_5w1s"),))


def teach(study: Study, args) -> Study:
    study_stage(study, args, study.base.override({"train.epochs": 40, "name": "teach"}), "teach")
    return study


if __name__ == "__main__":
    main(build, "interrupt test study", ["smoke"],
         before=teach if os.environ.get("KDRAY_TEST_STAGE") else None)
