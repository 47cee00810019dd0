"""Evaluation input pipeline: per-image PIL transforms (`dataset[i]` in a plain DataLoader) vs
`kdray.data.loader.eval_loader` (uint8 pixels, one transform per batch), over interleaved rounds
(per-image, batched, per-image, ...) so load from other jobs hits both alike. Prints each path's
median seconds and images/s and the ratio per-image / batched; checks the tensors are equal.

Data: Omniglot's Vinyals test split at 28 px (SMKD's mini preset) from ../shared/data, or any
`--dataset` kdray reads (e.g. cifar10 at 32 px). One thread, as a CPU trial of the mini studies.

    python bench/eval_batching.py                      # omniglot, 6000 images, 5 rounds
    python bench/eval_batching.py --dataset cifar10 --size 32 --items 10000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from kdray.config import DataConfig
from kdray.data.loader import eval_loader
from kdray.data.registry import build_dataset, get_spec
from kdray.data.transforms import eval_transform

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def drain(loader: DataLoader) -> tuple[float, torch.Tensor]:
    """Seconds to iterate the loader, and every image it gave (concatenated after timing)."""
    t0 = time.perf_counter()
    batches = [x for x, _ in loader]
    return time.perf_counter() - t0, torch.cat(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--split", default="test")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--items", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--root", default=str(SHARED))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = DataConfig(dataset=args.dataset, root=args.root, image_size=args.size)
    ds = build_dataset(cfg, args.split, eval_transform(cfg, get_spec(args.dataset)))
    idx = list(range(0, len(ds), max(1, len(ds) // args.items)))[: args.items]
    times: dict[str, list[float]] = {"per-image": [], "batched": []}
    for _ in range(args.rounds):
        t_ref, ref = drain(DataLoader(Subset(ds, idx), batch_size=args.batch_size))
        t_new, new = drain(eval_loader(ds, idx, batch_size=args.batch_size))
        assert torch.equal(ref, new), "batched tensors differ from the per-image ones"
        times["per-image"].append(t_ref)
        times["batched"].append(t_new)
    print(f"{args.dataset} {args.split} at {args.size} px, {len(idx)} images, "
          f"{args.rounds} interleaved rounds, 1 thread")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:9s} median {med:6.2f} s  ({len(idx) / med:7.0f} images/s)")
    ratios = [a / b for a, b in zip(times["per-image"], times["batched"], strict=True)]
    print(f"  per-image / batched: median {statistics.median(ratios):.2f}x "
          f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
