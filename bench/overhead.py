"""Overhead of the Ray layer over the bare engine on one fixed small job (CPU, conv4 CE, 32 px,
global batch 64), as min / median over interleaved rounds (bare, fit 1 worker, fit 2 workers,
bare, ...), so load from other jobs on a shared machine hits every configuration alike.

Prints, per configuration: the steady per-step time (epochs after the first) and its ratio to
the bare engine's step in the same round; `fit`'s fixed cost (wall minus the epochs' time) split
by an epoch hook into start-up (call -> the worker's first epoch; with `--breakdown` also: until
the worker process exists, and inside it) and the end (last epoch -> `fit` returns: curves,
checkpoint copy, MLflow end, teardown). Then the per-trial cost of a study with 1 and 2 workers
per trial: the trial slots' time not spent training, per trial ((wall x slots - training) /
trials; study-level start-up and the results table included, so an upper bound), and Tune's
own trial start -> end time beyond training (the trial's process start, imports, MLflow run).
`--breakdown` adds, in fresh processes per round: `ray.init` (local, dashboard on), `ray.shutdown`,
and `python -X importtime -c "import kdray.runtime.worker"` with its torchvision, mlflow and
ray.train shares.

    python bench/overhead.py                          # 5 rounds, 40 steps x 3 epochs per run
    python bench/overhead.py --rounds 5 --breakdown   # + ray.init / import probes
    python bench/overhead.py --no-fit --trials 4      # study trials only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
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


def mm(xs: list[float], fmt: str = "{:.2f}") -> str:
    """min / median."""
    return f"{fmt.format(min(xs))} / {fmt.format(statistics.median(xs))}"


def epoch_probe(path: str):
    """An epoch hook writing, at epoch 0 on rank 0, the wall clock and this process's start."""
    def hook(epoch: int, rank: int) -> None:
        if epoch != 0 or rank != 0:
            return
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(x.split()[1]) for x in f if x.startswith("btime"))
        with open(path, "w") as f:
            json.dump({"t": time.time(), "proc_start": boot + ticks / os.sysconf("SC_CLK_TCK")}, f)
    return hook


def timed_fit(fit, cfg: ExperimentConfig, name: str, tmp: str, uri: str) -> dict[str, float]:
    probe = os.path.join(tmp, f"{name}.json")
    t0 = time.time()
    res = fit(cfg, run_name=name, storage_path=f"{tmp}/ray", tracking_uri=uri,
              epoch_hooks=[epoch_probe(probe)])
    wall = time.time() - t0
    with open(probe) as f:
        p = json.load(f)
    train_s = sum(h["perf/epoch_s"] for h in res.history)
    startup = p["t"] - t0
    return {"step": steady_step(res.history), "wall": wall, "fixed": wall - train_s,
            "startup": startup, "end": wall - startup - train_s,
            # a process from Ray's pool that already existed counts 0 here
            "until_process": max(0.0, p["proc_start"] - t0),
            "in_process": p["t"] - max(p["proc_start"], t0)}


def trial_clock():
    """A Tune callback recording each trial's start, end and training seconds (perf/epoch_s)."""
    from ray.tune import Callback

    class Clock(Callback):
        def __init__(self) -> None:
            self.start, self.end, self.train = {}, {}, {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.train[trial.trial_id] = self.train.get(trial.trial_id, 0.0) + float(
                result.get("perf/epoch_s", 0.0))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time()

    return Clock()


def timed_study(root: str, tmp: str, uri: str, workers: int, trials: int, tag: str) -> dict:
    from kdray.runtime.session import cluster_slots
    from kdray.runtime.tune import run_study
    from kdray.study import Row, Study

    base = job(root, 5, 1, workers)
    study = Study(name=f"bench_overhead_{tag}", base=base, metric="loss", mode="min",
                  rows=tuple(Row(f"r{i}", {"seed": i}) for i in range(trials)), search="grid")
    clock = trial_clock()
    t0 = time.time()
    run_study(study, storage_path=f"{tmp}/ray", tracking_uri=uri, results_dir=f"{tmp}/results",
              callbacks=[clock])
    wall = time.time() - t0
    slots = min(trials, cluster_slots(workers, 0))
    train_s = sum(clock.train.values())
    running = [clock.end[k] - clock.start[k] - clock.train.get(k, 0.0) for k in clock.end]
    return {"wall": wall, "per_trial": wall / trials, "slots": slots,
            "fixed_per_trial": (wall * slots - train_s) / trials,
            "running": statistics.mean(running) if running else float("nan")}


def probe_processes(rounds: int) -> None:
    """ray.init / ray.shutdown and kdray's import time in fresh processes, `rounds` times."""
    init_code = ("import time; t0 = time.time(); from kdray.runtime.session import ensure_ray; "
                 "ensure_ray(None); t1 = time.time(); import ray; ray.shutdown(); "
                 "print(t1 - t0, time.time() - t1)")
    inits, downs, imports = [], [], {k: [] for k in ("kdray.runtime.worker", "torch",
                                                     "torchvision", "mlflow", "ray.train")}
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", init_code], capture_output=True, text=True,
                             check=True).stdout.split()
        inits.append(float(out[-2]))
        downs.append(float(out[-1]))
        err = subprocess.run([sys.executable, "-X", "importtime", "-c",
                              "import kdray.runtime.worker"], capture_output=True, text=True,
                             check=True).stderr
        for mod in imports:   # first (outermost) import of the module, cumulative microseconds
            m = re.search(rf"\|\s*(\d+) \|\s*{re.escape(mod)}$", err, re.M)
            imports[mod].append(int(m.group(1)) / 1e6 if m else 0.0)
    print(f"ray.init (local, dashboard on)          {mm(inits)} s")
    print(f"ray.shutdown                            {mm(downs)} s")
    for mod, xs in imports.items():
        print(f"import {mod:32s} {mm(xs)} s (cumulative, where first imported)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--trials", type=int, default=4, help="trials per study")
    p.add_argument("--no-fit", action="store_true", help="skip the fit rounds")
    p.add_argument("--no-study", action="store_true", help="skip the study rounds")
    p.add_argument("--breakdown", action="store_true", help="ray.init and import probes")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="kdray-bench-")
    root = os.path.join(tmp, "data")
    torch.set_num_threads(1)  # the same budget as one Ray worker with 1 CPU
    train(job(root, 2, 1))    # build the dataset cache and warm imports
    if a.breakdown:
        print(f"=== fixed-cost probes, fresh processes, min / median over {a.rounds} rounds ===")
        probe_processes(a.rounds)

    from kdray.runtime.driver import fit
    from kdray.runtime.session import ensure_ray

    t0 = time.time()
    ensure_ray(None)
    print(f"ray.init in this process: {time.time() - t0:.1f} s")
    uri = f"sqlite:///{tmp}/mlflow.db"
    runs: dict[str, list[dict]] = {"bare": [], "fit 1 worker": [], "fit 2 workers": []}
    for r in range(0 if a.no_fit else a.rounds):
        t0 = time.time()
        bare = train(job(root, a.steps, a.epochs))
        runs["bare"].append({"step": steady_step(bare.history), "wall": time.time() - t0})
        for w in (1, 2):
            runs[f"fit {w} worker" + ("s" if w > 1 else "")].append(
                timed_fit(fit, job(root, a.steps, a.epochs, w), f"bench-{w}w-r{r}", tmp, uri))
    n = a.rounds
    if not a.no_fit:
        print(f"\n=== kdray overhead (CPU, conv4, 32 px, global batch 64, {a.steps} steps x "
              f"{a.epochs} epochs), min / median over {n} interleaved rounds ===")
        bare_steps = [x["step"] for x in runs["bare"]]
        print(f"bare engine, 1 thread    step {mm([1e3 * s for s in bare_steps], '{:.1f}')} ms")
        for name in ("fit 1 worker", "fit 2 workers"):
            xs = runs[name]
            ratio = [x["step"] / b for x, b in zip(xs, bare_steps)]
            print(f"{name:24s} step {mm([1e3 * x['step'] for x in xs], '{:.1f}')} ms, "
                  f"ratio vs bare {mm(ratio, '{:.3f}')}")
            print(f"{'':24s} fixed {mm([x['fixed'] for x in xs], '{:.1f}')} s = start-up "
                  f"{mm([x['startup'] for x in xs], '{:.1f}')} s (until the worker process "
                  f"{mm([x['until_process'] for x in xs], '{:.1f}')}, inside it before epoch 0 "
                  f"{mm([x['in_process'] for x in xs], '{:.1f}')}) + end "
                  f"{mm([x['end'] for x in xs], '{:.1f}')} s")
    studies: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(0 if a.no_study else a.rounds):
        for w in (1, 2):
            studies[w].append(timed_study(root, tmp, uri, w, a.trials, f"{w}w_r{r}"))

    import ray

    ray.shutdown()
    if not a.no_study:
        print(f"\n=== study trials ({a.trials} trials of 5 steps, 1 epoch), min / median over "
              f"{n} interleaved rounds ===")
        for w, xs in studies.items():
            print(f"{w} worker(s) per trial, {xs[0]['slots']} concurrent: wall per trial "
                  f"{mm([x['per_trial'] for x in xs], '{:.1f}')} s, slot time beyond training "
                  f"per trial {mm([x['fixed_per_trial'] for x in xs], '{:.1f}')} s; Tune's "
                  f"trial start -> end beyond training {mm([x['running'] for x in xs], '{:.1f}')} s")


if __name__ == "__main__":
    main()
