"""Cost of an MKD training step against the plain student detector step.

Rows: the RetinaNet student alone (one forward); MKD with the task loss on the masked forward
(student masked forward + teacher forward + decoder + losses); full MKD with the default extra
unmasked student forward for the task loss. Random images, random boxes and random weights
(speed only); forward + backward + SGD step per iteration.

    python bench/mkd_step.py                 # CPU: RetinaNet R18 <- R34, 256 x 352, batch 2
    python bench/mkd_step.py --gpu           # RetinaNet R50 <- R101, 800 x 1088, bf16, batch 8
"""

from __future__ import annotations

import torch
from _steps import StepRunner, bench_args, compare  # bench/_steps.py

import kdray.methods.mkd.method as mkd_module
from kdray.config import ExperimentConfig
from kdray.modules.detectors import build_detector
from kdray.types import Batch

PRESETS = {
    "cpu": {"model.arch": "resnet18", "model.teacher_arch": "resnet34", "data.image_size": 256,
            "hw": (256, 352), "batch": 2},
    "gpu": {"model.arch": "resnet50", "model.teacher_arch": "resnet101", "data.image_size": 800,
            "hw": (800, 1088), "batch": 8},
}
_M = "method_cfg."
ROWS = {"student alone": {_M + "w_feat": 0.0, _M + "w_global": 0.0, _M + "mask_ratio": 0.0},
        "MKD, task on masked input": {_M + "task_on": "masked"},
        "MKD, extra unmasked task forward": {}}


def random_teacher(cfg: ExperimentConfig, num_classes: int) -> torch.nn.Module:
    """The configured teacher detector with random weights (no checkpoint needed)."""
    m = cfg.method_cfg
    net = build_detector(m.detector, cfg.model.teacher_arch, num_classes,
                         fpn_channels=m.teacher_fpn_channels, image_size=cfg.data.image_size)
    return net.requires_grad_(False).eval()


def detection_batch(b: int, hw: tuple[int, int], classes: int, device: torch.device) -> Batch:
    """Random images in [0, 1] with 8 random boxes each."""
    g = torch.Generator().manual_seed(0)
    h, w = hw
    targets = []
    for _ in range(b):
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 16 + torch.rand(8, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, classes, (8,), generator=g).to(device)})
    return Batch(views=[torch.rand(b, 3, h, w, generator=g).to(device)],
                 extra={"targets": targets, "sizes": [hw] * b})


def main() -> None:
    a = bench_args(__doc__, gpu_help="RetinaNet R50 <- R101 at 800 px, bf16", steps=3, warmup=1)
    pre = dict(PRESETS["gpu" if a.gpu else "cpu"])
    hw, batch, classes = pre.pop("hw"), a.batch or pre.pop("batch"), 80
    pre.pop("batch", None)
    device = torch.device("cuda" if a.gpu else "cpu")
    mkd_module.build_teacher = random_teacher  # speed only: no teacher checkpoint
    base = ExperimentConfig().override({"method": "mkd", **pre})
    print(f"{'gpu' if a.gpu else 'cpu'}: student RetinaNet-{pre['model.arch']}, teacher "
          f"RetinaNet-{pre['model.teacher_arch']}, {hw[0]}x{hw[1]} px, batch {batch}, "
          f"{torch.get_num_threads()} threads")
    runners = {}
    for label, over in ROWS.items():
        r = StepRunner(base.override(over), classes, batch, device,
                       lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9),
                       channels_last=device.type == "cuda")
        r.batch = detection_batch(batch, hw, classes, device)
        runners[label] = r
    compare(runners, ref="student alone", warmup=a.warmup, rounds=a.rounds, steps=a.steps)


if __name__ == "__main__":
    main()
