"""Labelled compute estimates for paper cells nobody has run: `FlopCounterMode` FLOPs of one
training step of the cell's student (forward + backward) and teacher (forward), counted on the
meta device (shapes only, nothing is computed or downloaded) at a batch of `COUNT_BATCH`, scaled
to the preset's batch and steps, at a stated sustained throughput.

What is counted: backbone + linear head of the student and the teacher (a detector's backbone,
FPN and head), every view the method feeds them (`VIEWS`). Not counted: method-specific heads
(iBOT/DINO projection, SS module, MAE decoder), the optimizer, data loading, evaluation, and the
study's stages (teacher training, SMKD phase 1, M2SD stage 1). Per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

from kdray.ledger.cells import Cell, preset_rows

GPU = "A100"
PEAK_TFLOPS = 312.0       # A100 dense bf16 tensor-core peak
UTILIZATION = 0.40
ASSUMPTION = (f"{GPU} at {UTILIZATION:.0%} of {PEAK_TFLOPS:g} TFLOP/s bf16 "
              f"(= {PEAK_TFLOPS * UTILIZATION:g} TFLOP/s sustained)")
COUNT_BATCH = 2
DETECTION_SIZE = (800, 1067)  # 800-px short side, 4:3 (COCO's typical aspect)

# Training images per epoch (standard split sizes) and classes of the linear head.
TRAIN_IMAGES = {"cifar100": 50_000, "imagenet": 1_281_167, "coco": 118_287, "cifar_fs": 38_400,
                "fc100": 36_000, "mini_imagenet": 38_400, "fscil_cifar100": 30_000,
                "fscil_mini_imagenet": 30_000, "fscil_cub200": 3_000}
CLASSES = {"cifar100": 100, "imagenet": 1000, "coco": 80, "cifar_fs": 64, "fc100": 60,
           "mini_imagenet": 64, "fscil_cifar100": 60, "fscil_mini_imagenet": 60,
           "fscil_cub200": 100}
# Forward passes per image of the student / teacher in one step, per method [kdray's methods]:
# SSKD 4 rotated views; M2SD the original, mixup and CutMix branches (no teacher); SMKD's EMA
# teacher sees the global crops, the student global + local crops (filled from the preset).
VIEWS = {"sskd": (4, 4), "m2sd": (3, 0), "cskd": (1, 1), "mkd": (1, 1), "dkd": (1, 1)}


@dataclass(frozen=True)
class Estimate:
    flops_per_step: float
    steps: int
    batch: int
    gpu_hours: float

    @property
    def total_flops(self) -> float:
        return self.flops_per_step * self.steps

    def label(self) -> str:
        return (f"est. {_sig(self.gpu_hours)} {GPU}-h/seed ({_sig(self.total_flops / 1e15)} PFLOP: "
                f"{self.steps} steps x {_sig(self.flops_per_step / 1e12)} TFLOP at batch "
                f"{self.batch})")


def _sig(x: float) -> str:
    return f"{x:.3g}"


def _timm_name(arch: str) -> str:
    return arch.split(".")[0]  # "regnety_160.deit_in1k" -> the architecture, without weights tag


@cache
def step_flops(arch: str, size: tuple[int, int], classes: int, train: bool,
               detector: bool = False) -> int:
    """FLOPs of one step of `arch` on `COUNT_BATCH` images of `size`: forward + backward when
    `train`, forward only otherwise; meta device, nothing computed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        if detector:
            from kdray.modules.detectors import build_detector

            model = build_detector("retinanet", arch, classes, image_size=size[0])
        else:
            import kdray.modules  # noqa: F401  (registers the kdray backbones)
            from kdray.modules.backbones import Classifier, build_backbone

            model = Classifier(build_backbone(_timm_name(arch), image_size=size[0]), classes)
        x = torch.empty(COUNT_BATCH, 3, *size)
    with FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(train):
            if detector:
                feats = list(model.backbone(x).values())
                outs = list(model.head(feats).values())
            else:
                outs = [model(x).logits]
            if train:
                sum(o.float().sum() for o in outs).backward()
    return int(counter.get_total_flops())


def workload(cell: Cell) -> dict[str, Any] | None:
    """What one training run of the cell's row does: architectures, views, batch, steps; None
    when the preset module is not there."""
    found = preset_rows(cell)
    if found is None:
        return None
    p, _ = found
    dataset = cell.match.get("data.dataset", p.get("data.dataset"))
    student = cell.match.get("model.arch", p.get("model.arch"))
    teacher = cell.match.get("model.teacher_arch", p.get("model.teacher_arch", ""))
    size = int(p.get("data.image_size", 224))
    batch = int(p.get("data.batch_size", 64))
    epochs = int(p.get("train.epochs", 1))
    per_epoch = p.get("train.steps_per_epoch") or math.ceil(TRAIN_IMAGES[dataset] / batch)
    s_views: list[tuple[int, int]]
    t_views: list[tuple[int, int]]
    detector = cell.method == "mkd"
    if cell.method == "smkd":
        teacher = student  # the EMA teacher
        g, loc = int(p.get("data.global_crops", 2)), int(p.get("data.local_crops", 0))
        small = int(p.get("data.local_size", size))
        s_views = [(g, size), (loc, small)]
        t_views = [(g, size)]
    else:
        ns, nt = VIEWS.get(cell.method, (1, 1))
        s_views, t_views = [(ns, size)], [(nt, size)] if teacher else []
    return {"dataset": dataset, "student": student, "teacher": teacher, "batch": batch,
            "steps": int(per_epoch) * epochs, "student_views": s_views, "teacher_views": t_views,
            "detector": detector, "classes": CLASSES[dataset]}


def estimate(cell: Cell) -> Estimate | None:
    """The labelled estimate of one run (seed) of the cell's row; None without its preset."""
    w = workload(cell)
    if w is None:
        return None

    def shape(s: int) -> tuple[int, int]:
        return DETECTION_SIZE if w["detector"] else (s, s)

    per = 0.0
    for arch, views, train in ((w["student"], w["student_views"], True),
                               (w["teacher"], w["teacher_views"], False)):
        for n, s in views:
            if n and arch:
                per += n * step_flops(arch, shape(s), w["classes"], train, w["detector"])
    per *= w["batch"] / COUNT_BATCH
    hours = per * w["steps"] / (PEAK_TFLOPS * 1e12 * UTILIZATION) / 3600.0
    return Estimate(per, w["steps"], w["batch"], hours)
