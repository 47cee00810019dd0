"""SMKD teacher-collapse diagnosis on the smoke preset's data, in one process (no Ray): one phase-1
model (the smoke phase-1 recipe), then phase-2 variants from it (JSON {name: overrides}); prints
5-way accuracy on test and the last epoch's train/* means (t_entropy = teacher entropy as a
fraction of log K). Seeds and episodes are the study's, so the smoke rows reproduce exactly.

    python diagnostics/smkd_collapse.py OUT_DIR '{"full_ema095": {}, "eq3": {"method_cfg.w_patch": 0}}'
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


def main(out: str, variants: dict[str, dict]) -> None:
    torch.set_num_threads(1)
    common, phase1, phase2 = P.PRESETS["smoke"]
    base = ExperimentConfig(method="smkd").override({**common, "data.root": f"{out}/data"})
    p1 = f"{out}/phase1"
    if not os.path.exists(f"{p1}/checkpoint.pt"):
        m = run_local(base.override({**phase1, "resources.cpus_per_worker": 1}), p1).metrics
        print("phase1", {k: round(v, 3) for k, v in m.items() if k in
                         ("test/acc_5w1s", "test/acc_5w5s", "train/t_entropy", "train/cls")})
    for name, over in variants.items():
        cfg = base.override({**phase2, "train.init_from": f"{p1}/checkpoint.pt", **over})
        t0 = time.time()
        m = run_local(cfg, f"{out}/{name}").metrics
        print(name, round(time.time() - t0), f"5w1s {m['test/acc_5w1s']:.2f} 5w5s {m['test/acc_5w5s']:.2f}",
            {k: round(v, 3) for k, v in m.items() if k.startswith("train/") and k != "train/lr"},
            flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
