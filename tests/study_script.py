"""A tiny study used by test_runtime.py (run as a subprocess so it can be interrupted)."""

import sys

from kdray.config import ExperimentConfig
from kdray.runtime.cli_study import main
from kdray.study import Row, Study

ROOT = sys.argv.pop(1)


def build(preset: str) -> Study:
    base = ExperimentConfig(method="ce").override({
        "data.root": ROOT, "model.arch": "conv2", "data.batch_size": 32, "train.epochs": 2,
        "train.steps_per_epoch": 4, "eval.shots": "1", "eval.episodes": 20,
        "data.synthetic_classes": 30, "data.synthetic_per_class": 20})
    return Study(name="tiny", base=base, metric="acc_5w1s",
                 rows=(Row("a", {}), Row("b", {"optim.lr": 3e-3}),
                       Row("oversized", {"data.batch_size": 1024}), Row("c", {"optim.lr": 1e-4})),
                 columns=(("5w1s", "acc_5w1s"),), search="grid")


if __name__ == "__main__":
    main(build, "tiny", ["smoke"])
