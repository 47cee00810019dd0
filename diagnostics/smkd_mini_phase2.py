"""An SMKD mini phase-2 row (the `mini` preset's recipe and one of its rows, by label) from a
phase-1 checkpoint, with overrides, in one process (no Ray, one thread): prints each evaluated
epoch's 5-way / 20-way 1-shot accuracy on the *val* characters (Vinyals' validation alphabets;
never test) and the teacher's health. Used to ask whether a longer phase 2 lets the supervised
terms overtake iBOT continued (docs/methods/smkd.md §1.11).

    python diagnostics/smkd_mini_phase2.py PHASE1_CKPT OUT_DIR "full: Eq. 3 + Eq. 5 (paper impl)" \
        '{"train.epochs": 6, "eval.every": 2}'

PHASE1_CKPT is the study's phase-1 stage checkpoint (`ray_results/stages/<study>-phase1.json`
names it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import torch

from kdray.config import ExperimentConfig
from kdray.engine.runner import run_local
from kdray.presets import smkd as P

SHOWN = ("train/loss", "train/t_entropy", "train/t_one_prototype", "acc_5w1s", "acc_20w1s")


def main(ckpt: str, out: str, label: str, over: dict) -> None:
    rows = {lab: o for lab, _, o in P.MINI_ROWS}
    if label not in rows:
        raise SystemExit(f"error: no mini row {label!r}; rows: {sorted(rows)}")
    torch.set_num_threads(1)
    cfg = ExperimentConfig(method="smkd").override(
        {**P.MINI, **P.MINI_PHASE2, "train.init_from": ckpt, **rows[label],
         "resources.cpus_per_worker": 1, "eval.split": "val", **over})
    name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") + "_" + "_".join(
        f"{k.split('.')[-1]}{v}" for k, v in over.items())
    t0 = time.time()
    res = run_local(cfg, os.path.join(out, name))
    for h in res.history:
        shown = {k: round(float(v), 3) for k, v in h.items() if k.endswith(SHOWN)}
        print(label, "| epoch", int(h["epoch"]), shown, flush=True)
    print(label, "| done", round(time.time() - t0), "s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
