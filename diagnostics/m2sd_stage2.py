"""M2SD stage-2 diagnosis on fscil_cifar10 (the real CIFAR-10 JPEGs in ../shared/data, FSCIL
protocol shape: 6 base classes + 2 sessions of 2-way 5-shot), in one process (no Ray): one stage-1
CE model (3 x 150 steps of 64, SGD 0.1), then stage-2 variants from it (JSON {name: overrides};
default 100 steps of 64 at lr 1e-2); prints Avg / S0 / last session and the train/* means.

    python diagnostics/m2sd_stage2.py OUT_DIR '{"full": {}, "full_ce": {"method_cfg.w_ce": 1.0}}'
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from kdray.config import ExperimentConfig
from kdray.engine.runner import run_local

SHARED = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def main(out: str, variants: dict[str, dict]) -> None:
    torch.set_num_threads(1)
    base = ExperimentConfig(method="m2sd").override({
        "data.dataset": "fscil_cifar10", "data.root": SHARED, "data.train_split": "base",
        "data.image_size": 32, "data.batch_size": 64, "data.augment": "basic",
        "model.arch": "resnet20", "optim.name": "sgd", "optim.momentum": 0.9,
        "optim.weight_decay": 5e-4, "train.log_every": 50, "eval.kind": "fscil",
        "eval.split": "test", "seed": 0})
    stage1 = f"{out}/stage1"
    if not os.path.exists(f"{stage1}/checkpoint.pt"):
        run_local(base.override({"method": "ce", "optim.lr": 0.1, "optim.nesterov": True,
                                 "train.epochs": 3, "train.steps_per_epoch": 150,
                                 "eval.every": 3}), stage1)
    for name, over in variants.items():
        cfg = base.override({"optim.lr": 1e-2, "train.epochs": 1, "train.steps_per_epoch": 100,
                             "train.init_from": f"{stage1}/checkpoint.pt", **over})
        t0 = time.time()
        m = run_local(cfg, f"{out}/{name}").metrics
        print(name, round(time.time() - t0), f"Avg {m['test/fscil_avg']:.2f} S0 {m['test/fscil_s0']:.2f} "
              f"last {m['test/fscil_s2']:.2f}",
            {k: round(v, 3) for k, v in m.items() if k.startswith("train/")}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
