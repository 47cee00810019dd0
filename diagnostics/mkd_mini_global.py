"""MKD mini, one row in one process (no Ray, one thread), scored on *val* (240 images carved from
shapes_det's train split; never test, so a weight may be chosen on it): the `mini` preset with
overrides, a given teacher checkpoint, and each epoch's losses printed. Used to choose the global
loss weight `w_global` of the mini tier (docs/methods/mkd.md §2.10), whose FGD default 5e-6 made
`w_global x L_global` about 53 of a total loss of 54.

    python diagnostics/mkd_mini_global.py OUT_DIR NAME TEACHER_CKPT '{"method_cfg.w_global": 5e-8}'
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from kdray.config import ExperimentConfig
from kdray.engine.runner import run_local
from kdray.presets import mkd as P

SHOWN = ("train/loss", "train/task", "train/feat", "train/global", "AP", "AP50")


def main(out: str, name: str, teacher: str, over: dict) -> None:
    torch.set_num_threads(1)
    cfg = ExperimentConfig(method="mkd").override(
        {**P.MINI, "model.teacher_ckpt": teacher, "eval.split": "val", "seed": 0, **over})
    t0 = time.time()
    res = run_local(cfg, os.path.join(out, name))
    for h in res.history:
        print(name, "epoch", int(h["epoch"]),
              {k: float(f"{float(v):.4g}") for k, v in h.items() if k.endswith(SHOWN)},
              flush=True)
    print(name, "done", round(time.time() - t0), "s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3],
         json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
