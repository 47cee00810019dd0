"""SMKD mini phase 1 (iBOT on Omniglot, the `mini` preset's recipe) with overrides, in one process
(no Ray, one thread): prints each epoch's teacher entropy (fraction of log K) and loss, and the
final 5-way / 20-way 1-shot accuracy on the *val* characters (Vinyals' 6 validation alphabets;
never test, so a recipe may be chosen on it; pass '{"eval.split": "test"}' to score test). Used
to find out why the mini teacher ends near uniform and to choose a recipe that does not
(docs/methods/smkd.md §1.11).

    python diagnostics/smkd_mini_phase1.py OUT_DIR NAME '{"method_cfg.teacher_temp": 0.02}'
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from kdray.config import ExperimentConfig
from kdray.engine.runner import run_local
from kdray.presets import smkd as P

SHOWN = ("train/loss", "train/t_entropy", "train/t_one_prototype", "acc_5w1s", "acc_20w1s")


def main(out: str, name: str, over: dict) -> None:
    torch.set_num_threads(1)
    cfg = ExperimentConfig(method="smkd").override(
        {**P.MINI, **P.MINI_PHASE1, "resources.cpus_per_worker": 1, "eval.split": "val",
         **over})
    t0 = time.time()
    res = run_local(cfg, os.path.join(out, name))
    for h in res.history:
        print(name, "epoch", int(h["epoch"]),
              {k: round(float(v), 3) for k, v in h.items() if k.endswith(SHOWN)}, flush=True)
    print(name, "done", round(time.time() - t0), "s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
