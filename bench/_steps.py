"""Shared by the method benchmarks: time training steps of one method on a fixed batch."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from kdray.engine.loop import seed_all
from kdray.methods import build_method
from kdray.types import Batch, Step


class StepRunner:
    """One method, its optimizer and a fixed random batch; `run(n)` times n training steps
    (forward + backward + optimizer step; bf16 autocast on CUDA).

    Args:
        cfg: the method's config (`build_method(cfg, classes)`).
        classes: number of classes (random labels in [0, classes)).
        batch: images per step.
        device: where to run.
        optimizer: (params) -> torch optimizer.
        channels_last: convert the method and the images to channels-last (CUDA CNNs).
    """

    def __init__(self, cfg, classes: int, batch: int, device: torch.device, optimizer,
                 *, channels_last: bool = False) -> None:
        seed_all(0)
        self.method = build_method(cfg, classes).to(device).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.method = self.method.to(memory_format=fmt)
        params = [p for g in self.method.param_groups(0.0) for p in g["params"]]
        self.opt = optimizer(params)
        size = cfg.data.image_size
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        self.batch = Batch(views=[x], labels=torch.randint(0, classes, (batch,), device=device))
        self.device, self.it = device, 0

    def run(self, steps: int) -> float:
        """Input images per second over `steps` training steps."""
        cuda = self.device.type == "cuda"
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            with amp:
                out = self.method(self.batch, Step(it=self.it, epoch=0, total_its=10**6))
            out["loss"].backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.it += 1
        if cuda:
            torch.cuda.synchronize()
        return len(self.batch) * steps / (time.perf_counter() - t0)


def compare(runners: dict[str, StepRunner], *, ref: str, warmup: int, rounds: int,
            steps: int) -> dict[str, float]:
    """Median images/s per runner over interleaved rounds (robust to drifting load on a shared
    machine); prints each and its throughput relative to runner `ref`."""
    for r in runners.values():
        r.run(warmup)
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, r in runners.items():
            samples[label].append(r.run(steps))
    res = {label: statistics.median(v) for label, v in samples.items()}
    width = max(map(len, res))
    for label, v in res.items():
        print(f"  {label:{width}s} {v:9.1f} images/s ({v / res[ref]:.3f}x {ref}; median of "
              f"{rounds} rounds of {steps} steps)")
    return res


def bench_args(doc: str, *, gpu_help: str, steps: int, warmup: int, rounds: int = 3,
               batch_help: str = "images per step") -> argparse.Namespace:
    """The benchmarks' common flags (--gpu, --steps, --rounds, --warmup, --batch, --threads),
    parsed; sets the CPU thread count and stops when --gpu finds no CUDA device."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", action="store_true", help=gpu_help)
    p.add_argument("--steps", type=int, default=steps, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--batch", type=int, default=None, help=batch_help)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    return a
