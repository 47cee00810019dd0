"""Throughput of an SMKD phase-2 training step and the share of it spent outside the model.

CPU (default): the real pipeline of the smoke preset (synthetic_fs, multi-crop + block masks in
the data loader, class-aware batches) with `vit_tiny_p4_32` at 32 px. Each step is split into
data (loading + augmentation, mask drawing reported separately), model (student and teacher
forward passes), losses (pair mining + patch matching + cross-entropies), and backward +
optimizer + EMA/centre update. Timers wrap the loss functions and the collate's mask drawing;
the method itself is unchanged.

`--gpu` (only where CUDA exists): ViT-S/16 at 224 px, 2 x 224 + 10 x 96 crops, 64 images per
GPU, paper head (8192 prototypes), bf16 autocast; random tensors (no data loading); prints
images/s/GPU and peak memory.

CPU prints ms per step (and per part of it) for both `patch_impl`s as min / median over
interleaved rounds, the paper / official ratio per round, and with `--memory` the peak resident
memory of a fresh process training each implementation alone.

    python bench/smkd_step.py                 # CPU, 2 threads, batch 32, 5 rounds of 3 steps
    python bench/smkd_step.py --memory        # + peak memory per implementation
    python bench/smkd_step.py --gpu
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import torch

from kdray.config import ExperimentConfig
from kdray.data import build_train_loader, set_epoch
from kdray.data.loader import TrainCollate
from kdray.engine.loop import seed_all
from kdray.engine.optim import apply_schedules, build_optimizer
from kdray.methods import build_method
from kdray.methods.smkd import losses as smkd_losses
from kdray.presets.smkd import SMOKE, SMOKE_PHASE2
from kdray.types import Batch, Step

TIMES: dict[str, float] = defaultdict(float)
LOSS_FNS = ("global_pair_mask", "cls_pair_mask", "cls_loss", "mim_loss", "patch_loss_paper",
            "patch_loss_official")


_DEPTH: dict[str, int] = defaultdict(int)


def _timed(key: str, fn):
    """`fn` adding its wall time to TIMES[key]; nested timed calls of one key count once."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _DEPTH[key] += 1
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH[key] -= 1
            if _DEPTH[key] == 0:
                TIMES[key] += time.perf_counter() - t0
    return wrapper


def install_timers() -> None:
    """Time the loss functions (the method calls them through the module) and mask drawing."""
    for name in LOSS_FNS:
        setattr(smkd_losses, name, _timed("losses", getattr(smkd_losses, name)))
    TrainCollate._masks = _timed("masking", TrainCollate._masks)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model_timer(module: torch.nn.Module, device: torch.device) -> None:
    """Forward pre/post hooks adding the module's forward time to TIMES['model']."""
    start: list[float] = []

    def pre(*_):
        _sync(device)
        start.append(time.perf_counter())

    def post(*_):
        _sync(device)
        TIMES["model"] += time.perf_counter() - start.pop()

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def cpu_config(arch: str, batch: int, root: str, patch_impl: str) -> ExperimentConfig:
    return ExperimentConfig(method="smkd").override({
        **SMOKE, **SMOKE_PHASE2, "model.arch": arch, "data.batch_size": batch, "data.root": root,
        "method_cfg.allow_scratch": True, "method_cfg.patch_impl": patch_impl})


def run_steps(method, opt, cfg: ExperimentConfig, batches, device: torch.device,
              warmup: int) -> tuple[float, int]:
    """Train on `batches` (an iterator); returns (seconds, images) after `warmup` steps."""
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" \
        else contextlib.nullcontext()
    n, images, total, t_data = 0, 0, 0.0, time.perf_counter()
    for batch in batches:
        batch = batch.to(device)
        _sync(device)
        t0 = time.perf_counter()
        data = t0 - t_data
        step = Step(it=n, epoch=1, total_its=1000, its_per_epoch=100)
        apply_schedules(opt, cfg.optim, step.progress, cfg.train.epochs)
        with amp:
            out = method(batch, step)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(method.student.parameters(), cfg.optim.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step)
        _sync(device)
        t_data = time.perf_counter()
        TIMES["data"] += data
        total += t_data - t0 + data
        images += len(batch)
        n += 1
        if n == warmup:   # the next batch's loading is the first timed
            TIMES.clear()
            images, total = 0, 0.0
    return total, images


def _batches(cfg: ExperimentConfig):
    """The smoke pipeline's training batches, epoch after epoch."""
    loader = build_train_loader(cfg, rank=0, world=1)
    for epoch in itertools.count():
        set_epoch(loader, epoch)
        yield from loader


def _stats(xs: list[float]) -> str:
    return f"{min(xs):7.1f} / {statistics.median(xs):7.1f}"


def _peak_rss(impl: str, args: argparse.Namespace, root: str) -> tuple[float, float]:
    """(whole-step peak resident MB of a fresh process training `impl`, extra peak MB of the
    patch loss's forward + backward alone at the step's shapes in another fresh process)."""
    out = []
    for what in ("step", "loss"):
        cmd = [sys.executable, __file__, "--peak-rss", f"{impl}:{what}", "--arch", args.arch,
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads), "--data-root", root]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        out.append(float(res.split()[-1]))
    return out[0], out[1]


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_only(args: argparse.Namespace) -> None:
    impl, what = args.peak_rss.split(":")
    torch.set_num_threads(args.threads)
    cfg = cpu_config(args.arch, args.batch, args.data_root, impl)
    seed_all(0)
    method = build_method(cfg, 64).train()
    if what == "step":
        opt = build_optimizer(method, cfg.optim)
        run_steps(method, opt, cfg, itertools.islice(_batches(cfg), args.warmup + args.steps),
                  torch.device("cpu"), args.warmup)
        print(_max_rss_mb())
        return
    # the patch term's inputs as the method makes them: (G, B, N, K) probabilities and
    # log-probabilities, (G, B, N, D) features, class-aware labels (4 images per class)
    d, m = cfg.data, cfg.method_cfg
    g, b, n = d.global_crops, d.batch_size, (d.image_size // d.patch_size) ** 2
    dim = method.student.backbone.num_features
    labels = torch.arange(b) // 4
    t_probs = torch.softmax(torch.randn(g, b, n, m.out_dim), -1)
    logits = torch.randn(g, b, n, m.out_dim, requires_grad=True)
    t_feat, s_feat = torch.randn(g, b, n, dim), torch.randn(g, b, n, dim)
    weight = torch.full((g, b, n), 1.0 / n)
    pairs = smkd_losses.global_pair_mask(labels, g, same_image=True)
    del method
    s_logp = torch.log_softmax(logits, -1)
    before = _max_rss_mb()
    if impl == "official":
        loss = smkd_losses.patch_loss_official(t_probs, s_logp, t_feat, s_feat, labels, None)
    else:
        loss = smkd_losses.patch_loss_paper(t_probs, s_logp, t_feat, s_feat, weight, pairs)
    loss.backward()
    print(_max_rss_mb() - before)


def bench_cpu(args: argparse.Namespace) -> None:
    """paper and official trained side by side: `rounds` interleaved rounds of `steps` steps
    each (paper, official, paper, ...), so load on a shared machine hits both alike."""
    torch.set_num_threads(args.threads)
    install_timers()
    root = args.data_root or tempfile.mkdtemp(prefix="kdray-bench-")
    runs, samples = {}, {}
    for impl in ("paper", "official"):
        cfg = cpu_config(args.arch, args.batch, root, impl)
        seed_all(0)
        method = build_method(cfg, 64).train()
        _model_timer(method.student, torch.device("cpu"))
        _model_timer(method.teacher, torch.device("cpu"))
        opt = build_optimizer(method, cfg.optim)
        batches = _batches(cfg)
        run_steps(method, opt, cfg, itertools.islice(batches, args.warmup), torch.device("cpu"), 0)
        runs[impl], samples[impl] = (method, opt, cfg, batches), []
    for _ in range(args.rounds):
        for impl, (method, opt, cfg, batches) in runs.items():
            TIMES.clear()
            total, _ = run_steps(method, opt, cfg, itertools.islice(batches, args.steps),
                                 torch.device("cpu"), 0)
            samples[impl].append({"step": total, **TIMES})
    cfg = runs["paper"][2]
    print(f"{cfg.model.arch} at {cfg.data.image_size} px, batch {cfg.data.batch_size}, "
          f"{cfg.data.global_crops}+{cfg.data.local_crops} crops, {args.threads} threads; "
          f"ms per step, min / median over {args.rounds} interleaved rounds of {args.steps} steps")
    parts = {"whole step": lambda t: t["step"],
             "data loading + augmentation": lambda t: t["data"] - t.get("masking", 0.0),
             "mask drawing (collate)": lambda t: t.get("masking", 0.0),
             "pair mining + matching + loss terms": lambda t: t["losses"],
             "student + teacher forward": lambda t: t["model"],
             "backward + AdamW + EMA/centres":
                 lambda t: t["step"] - t["data"] - t["model"] - t["losses"]}
    print(f"  {'':38s} {'paper':>17s} {'official':>17s}")
    for name, part in parts.items():
        cols = [_stats([1000 * part(t) / args.steps for t in samples[impl]]) for impl in runs]
        print(f"  {name:38s} {cols[0]:>17s} {cols[1]:>17s}")
    ratio = [p["step"] / o["step"] for p, o in zip(samples["paper"], samples["official"])]
    loss_ratio = [p["losses"] / o["losses"] for p, o in zip(samples["paper"], samples["official"])]
    print(f"  paper / official per round: step {min(ratio):.3f} / {statistics.median(ratio):.3f}, "
          f"losses {min(loss_ratio):.3f} / {statistics.median(loss_ratio):.3f} (min / median)")
    if args.memory:
        peaks = {impl: _peak_rss(impl, args, root) for impl in runs}
        print("  peak resident memory of a fresh process training each alone: "
              + ", ".join(f"{k} {v[0]:.0f} MB" for k, v in peaks.items()))
        print("  extra peak memory of the patch loss forward + backward alone (fresh process, "
              "the step's shapes): " + ", ".join(f"{k} {v[1]:.0f} MB" for k, v in peaks.items()))


def gpu_batches(cfg: ExperimentConfig, n: int, device: torch.device):
    d, b = cfg.data, cfg.data.batch_size
    g = torch.Generator(device=device).manual_seed(0)
    grid = d.image_size // d.patch_size
    for _ in range(n):
        views = [torch.randn(b, 3, d.image_size, d.image_size, device=device, generator=g)
                 for _ in range(d.global_crops)]
        views += [torch.randn(b, 3, d.local_size, d.local_size, device=device, generator=g)
                  for _ in range(d.local_crops)]
        masks = [torch.rand(b, grid, grid, device=device, generator=g) < 0.15
                 for _ in range(d.global_crops)]
        labels = torch.arange(b, device=device) // 2   # pairs of same-class images
        yield Batch(views=views, labels=labels, masks=masks)


def bench_gpu(args: argparse.Namespace) -> None:
    from kdray.presets.smkd import PRESETS

    device = torch.device("cuda")
    common, _, phase2 = PRESETS["cifar_fs"]
    cfg = ExperimentConfig(method="smkd").override({
        **common, **phase2, "data.batch_size": args.gpu_batch, "method_cfg.allow_scratch": True,
        "resources.num_workers": 1})
    seed_all(0)
    method = build_method(cfg, 64).to(device).train()
    opt = build_optimizer(method, cfg.optim)
    install_timers()
    _model_timer(method.student, device)
    _model_timer(method.teacher, device)
    torch.cuda.reset_peak_memory_stats()
    total, images = run_steps(method, opt, cfg, gpu_batches(cfg, args.steps + args.warmup, device),
                              device, args.warmup)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"GPU {torch.cuda.get_device_name()}: ViT-S/16, {cfg.data.global_crops} x 224 + "
          f"{cfg.data.local_crops} x 96 crops, batch {args.gpu_batch}, bf16: "
          f"{images / total:.1f} images/s/GPU, {1000 * total / args.steps:.0f} ms/step, "
          f"peak memory {peak:.1f} GiB; losses {100 * TIMES['losses'] / total:.1f} % of the step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_tiny_p4_32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="steps per round (CPU)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (CPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory", action="store_true",
                   help="also the peak resident memory of each implementation (fresh processes)")
    p.add_argument("--peak-rss", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None, help="default: a temporary folder")
    p.add_argument("--gpu", action="store_true", help="ViT-S/16, 224 px, bf16 (needs CUDA)")
    p.add_argument("--gpu-batch", type=int, default=64)
    args = p.parse_args()
    if args.peak_rss:
        peak_rss_only(args)
    elif args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device here")
        bench_gpu(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
