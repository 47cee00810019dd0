"""Overhead of the Ray layer over the bare engine on one fixed small job.

Prints: per-step time in the bare engine, in `fit` with 1 and 2 workers (and the ratios; target
fit/bare <= 1.05 on CPU), the fixed start-up cost of `fit`, and the per-trial overhead of a study.

    python bench/overhead.py [--steps 40] [--epochs 3] [--trials 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from kdray.config import ExperimentConfig
from kdray.engine.runner import train


def job(root: str, steps: int, epochs: int, workers: int = 1) -> ExperimentConfig:
    return ExperimentConfig().override({
        "method": "ce", "data.root": root, "model.arch": "conv4", "data.batch_size": 64,
        "train.epochs": epochs, "train.steps_per_epoch": steps, "eval.kind": "none",
        "train.log_every": 10, "resources.num_workers": workers})


def steady_step(history: list[dict]) -> float:
    """Median per-step time over epochs after the first (warm-up excluded)."""
    return statistics.median(h["perf/step_s"] for h in history[1:] or history)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--trials", type=int, default=3)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="kdray-bench-")
    root = os.path.join(tmp, "data")
    torch.set_num_threads(1)  # the same budget as one Ray worker with 1 CPU
    train(job(root, 2, 1))    # build the dataset cache and warm imports

    t0 = time.perf_counter()
    bare = train(job(root, a.steps, a.epochs))
    bare_wall = time.perf_counter() - t0
    bare_step = steady_step(bare.history)

    import ray

    from kdray.runtime.driver import fit
    from kdray.runtime.session import ensure_ray

    t0 = time.perf_counter()
    ensure_ray(None)
    ray_init = time.perf_counter() - t0
    uri = f"sqlite:///{tmp}/mlflow.db"
    rows = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        res = fit(job(root, a.steps, a.epochs, workers), run_name=f"bench-{workers}w",
                  storage_path=f"{tmp}/ray", tracking_uri=uri)
        wall = time.perf_counter() - t0
        train_s = sum(h["perf/epoch_s"] for h in res.history)
        rows[workers] = (steady_step(res.history), wall, wall - train_s)

    from kdray.runtime.tune import run_study
    from kdray.study import Row, Study

    base = job(root, 5, 1)
    study = Study(name="bench_overhead", base=base, metric="train/loss", mode="min",
                  rows=tuple(Row(f"r{i}", {"seed": i}) for i in range(a.trials)), search="grid")
    t0 = time.perf_counter()
    res = run_study(study, storage_path=f"{tmp}/ray", tracking_uri=uri,
                    results_dir=f"{tmp}/results")
    study_wall = time.perf_counter() - t0
    ray.shutdown()

    print("\n=== kdray overhead (CPU, conv4, 32 px, global batch 64) ===")
    print(f"bare engine, 1 thread       step {bare_step * 1e3:7.1f} ms   wall {bare_wall:6.1f} s")
    for w, (step, wall, fixed) in rows.items():
        print(f"fit, {w} worker(s) x 1 CPU    step {step * 1e3:7.1f} ms   wall {wall:6.1f} s   "
              f"fixed start-up+teardown {fixed:5.1f} s   step ratio vs bare {step / bare_step:5.3f}")
    print(f"ray.init (local, dashboard on): {ray_init:.1f} s")
    print(f"study: {a.trials} trials (1 worker, 5 steps each) in {study_wall:.1f} s, "
          f"{study_wall / a.trials:.1f} s per trial (2 concurrent slots on this machine)")
    r = rows[1][0] / bare_step
    print(f"TARGET fit(1 worker)/bare per-step <= 1.05: {r:.3f} -> {'OK' if r <= 1.05 else 'MISSED'}")
    print(f"results of the study: {len(res.rows)} rows")


if __name__ == "__main__":
    main()
