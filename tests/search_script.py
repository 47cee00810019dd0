"""A tiny searched study used by test_search_report.py (a subprocess: one Ray per process)."""

import sys

from kdray.config import ExperimentConfig
from kdray.runtime.cli_study import main
from kdray.search import Float
from kdray.study import Study

ROOT = sys.argv.pop(1)


def build(preset: str) -> Study:
    base = ExperimentConfig(method="ce").override({
        "data.root": ROOT, "model.arch": "conv2", "data.batch_size": 32, "train.epochs": 2,
        "train.steps_per_epoch": 3, "eval.shots": "1", "eval.episodes": 20,
        "data.synthetic_classes": 30, "data.synthetic_per_class": 20})
    return Study(name="tiny_search", base=base, metric="acc_5w1s",
                 space={"optim.lr": Float(1e-4, 3e-2, log=True),
                        "method_cfg.label_smoothing": Float(0.0, 0.3)},
                 num_samples=3, grace_period=1, reduction_factor=2,
                 columns=(("5w1s", "acc_5w1s"),))


if __name__ == "__main__":
    main(build, "tiny search", ["smoke"])
