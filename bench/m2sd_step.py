"""Cost of an M2SD stage-2 training step against a stage-1 (cross-entropy) step.

Stage 2 runs the backbone on 3x the images (clean + mixup + CutMix) and the train-only FE module
(MHSA / coordinate attention per stage, BiFPN, W′) on the clean ones; the intermediate rows show
what each part costs. Random images and weights (speed only); forward + backward + SGD step.
Throughput counts *input* images (the batch), not the virtual instances.

    python bench/m2sd_step.py                  # CPU: ResNet-20, 32 px, CIFAR-100 setting
    python bench/m2sd_step.py --gpu            # CUDA: ResNet-18, 224 px, CUB-200 setting, bf16
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _steps import StepRunner  # bench/_steps.py

from kdray.config import ExperimentConfig

SETTINGS = {
    "cpu": {"model.arch": "resnet20", "data.image_size": 32, "classes": 60, "batch": 64},
    "gpu": {"model.arch": "resnet18", "data.image_size": 224, "classes": 100, "batch": 256},
}
_M = "method_cfg."
_NO_FE = {_M + "w_sd": 0.0, _M + "w_at": 0.0}
ROWS = {
    "stage 1 (CE)": ("ce", {}),
    "stage 2: mixup + CutMix + KL": ("m2sd", dict(_NO_FE)),
    "stage 2: FE only (sd + at + aux)": ("m2sd", {_M + "mixup": False, _M + "cutmix": False}),
    "stage 2: full M2SD": ("m2sd", {}),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="ResNet-18 at 224 px on CUDA (CUB setting)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="override the setting's batch size")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    a = p.parse_args(argv)
    if a.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    s = dict(SETTINGS["gpu" if a.gpu else "cpu"])
    classes, batch = s.pop("classes"), a.batch or s.pop("batch")
    s.pop("batch", None)
    device = torch.device("cuda" if a.gpu else "cpu")
    torch.set_num_threads(a.threads)
    print(f"device {device}, {s['model.arch']} at {s['data.image_size']} px, batch {batch}, "
          f"{classes} classes, {a.repeats} x {a.steps} steps")
    base_ips = None
    for label, (method, over) in ROWS.items():
        cfg = ExperimentConfig(method=method).override({**s, **over})
        runner = StepRunner(cfg, classes, batch, device,
                            lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9))
        runner.run(1)  # warm-up (allocator, cuDNN autotune)
        ips = statistics.median(runner.run(a.steps) for _ in range(a.repeats))
        base_ips = base_ips or ips
        print(f"{label:36s} {ips:9.1f} img/s  ({base_ips / ips:4.2f}x the stage-1 step time)")
        del runner
        if a.gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
