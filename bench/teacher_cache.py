"""A KD trial's test evaluation with the frozen teacher's predictions computed (a cold cache: the
first trial of a study) against read from kdray's teacher-prediction cache (every later trial),
over interleaved rounds (cold, warm, cold, ...). Prints each path's median seconds and the ratio
cold / warm; checks that both give the same metrics.

Default: the SSKD mini preset's pair (resnet20 teacher -> resnet8 student, random weights: speed
only) on all 10,000 CIFAR-10 test images at 32 px from ../shared/data, one thread, as a CPU trial
of the mini study.

    python bench/teacher_cache.py
    python bench/teacher_cache.py --items 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdray.config import ExperimentConfig
from kdray.data.loader import build_eval_dataset
from kdray.eval import Top1Evaluator
from kdray.methods import build_method
from kdray.modules.teachers import build_classifier

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--items", type=int, default=0, help="test images (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", default=str(SHARED))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["KDRAY_CACHE_DIR"] = str(Path(tmp) / "cache")
        teacher = build_classifier(ExperimentConfig().override({"model.arch": args.teacher}), 10)
        ckpt = str(Path(tmp) / "teacher.pt")
        torch.save({"model": {"student": teacher.state_dict()}}, ckpt)
        cfg = ExperimentConfig().override({
            "method": "kd", "data.dataset": "cifar10", "data.root": args.root,
            "data.image_size": 32, "model.arch": args.student, "model.teacher_arch": args.teacher,
            "model.teacher_ckpt": ckpt, "eval.kind": "top1", "eval.split": "test",
            "eval.max_items": args.items})
        dataset = build_eval_dataset(cfg)
        times: dict[str, list[float]] = {"cold": [], "warm": []}
        results = []
        for r in range(args.rounds):
            for kind in ("cold", "warm"):
                if kind == "cold":  # a fresh cache folder: the teacher runs on every batch
                    os.environ["KDRAY_CACHE_DIR"] = str(Path(tmp) / f"cache{r}")
                torch.manual_seed(0)  # the same student each round
                method = build_method(cfg, 10)  # a new trial: new method, new evaluator
                t0 = time.perf_counter()
                results.append(Top1Evaluator(cfg, dataset)(method, "cpu").metrics)
                times[kind].append(time.perf_counter() - t0)
        assert all(m == results[0] for m in results), "cached and computed metrics differ"
    n = int(results[0]["test/n_images"])
    print(f"cifar10 test, {n} images at 32 px, {args.teacher} -> {args.student}, "
          f"{args.rounds} interleaved rounds, 1 thread")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:5s} median {med[k]:6.2f} s  ({', '.join(f'{t:.2f}' for t in v)})")
    print(f"  ratio cold / warm: {med['cold'] / med['warm']:.2f}x; metrics equal")


if __name__ == "__main__":
    main()
