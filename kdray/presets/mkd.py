"""Presets of the MKD ablation (studies/mkd_ablation.py).

- `smoke`: COCO128 (../shared/data; the same 128 images for training and evaluation, so the
  numbers only prove the pipeline runs), RetinaNet-R18 student, RetinaNet-R34 teacher trained as
  the study's first stage (2 x 6 steps), 160 px short side, batch 4, rows 2 x 3 steps, evaluation
  on 8 evenly spaced images, CPU. Measured with run_local, 1 thread: teacher stage 50 s, one
  full-MKD row 34 s (5 s a step), so ~3-4 minutes for the study on 2 cores (256 px / 2 x 4 steps
  took 416 s and 169 s on a loaded machine, hence the smaller setting).
- `mini`: evidence within an hour on 2 CPU cores, on `shapes_det` (generated: 1-3 of three shapes
  per 128-px image on a cluttered background, exact boxes; kdray/data/shapes_det.py). COCO128 is
  ruled out: 128 images of 80 classes, and a detector trained from scratch on it stays at AP 0 in
  the smoke tier's budget. RetinaNet-R18 student, RetinaNet-R34 teacher trained as the study's
  first stage, both with a 64-channel FPN and head (torchvision's is 256) and no pretrained
  weights (none can be downloaded here). AdamW lr MINI_LR, weight decay 0.05, cosine with a
  0.2-epoch warm-up, batch 8; the rows (student alone, FGD-style feature MSE, MKD full) x seeds
  0, 1, 2 train 2 x 200 steps, two at a time, one core each; the teacher MINI_TEACHER_STEPS
  steps on both cores. All 600 test images are scored. Optimiser, learning rate and batch were
  chosen on `val` (240 images carved from train) with the student alone, and the global-loss
  weight MINI_W_GLOBAL on val with the full method
  (docs/methods/mkd.md §2.10): although FGD's 5e-6 makes the global term ~95% of the loss on
  these 64-channel features, smaller weights scored lower on val. SGD at lr 0.02 (the paper's
  optimiser) stayed at AP 0 for 300 steps. What differs from the paper's recipe: the data, the
  sizes, the optimiser, 400 steps, a 128-d decoder with 4 heads.
- `coco` (RetinaNet-R50 student) and `coco_r18` (RetinaNet-R18 student), both with a
  RetinaNet-R101 teacher: the FGD/MGD 2x schedule MKD compares in (docs/methods/mkd.md §2.3, [inferred]):
  COCO 2017 train, 24 epochs, SGD momentum 0.9, weight decay 1e-4, lr 0.01 for 16 images (FGD
  RetinaNet config), x0.1 at epochs 16 and 22, ~500-iteration linear warm-up, grad-clip 35,
  800 px short side (long side <= 1333), ImageNet-pretrained backbones, 8 GPUs x 2 images.
  The teacher is trained as a first stage with the same recipe unless model.teacher_ckpt is set.
  Not reproduced: the paper's teacher (assumed RetinaNet-X101-64x4d as in FGD/MGD; torchvision has
  no ResNeXt FPN detector we can load, so R101), mmdetection's multi-size batching details, the
  inheriting strategy (student neck/head from the teacher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdray.presets import method_space
from kdray.search import Budget

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_M = "method_cfg."
#: the detector alone (no teacher, no masking): the teacher stage and the first row.
ALONE = {_M + "w_feat": 0.0, _M + "w_global": 0.0, _M + "mask_ratio": 0.0,
         _M + "decoder_depth": 0}

SMOKE: dict[str, Any] = {
    "method": "mkd", "data.dataset": "coco128", "data.root": str(SHARED_DATA),
    "data.train_split": "train", "data.image_size": 160, "data.batch_size": 4,
    "model.arch": "resnet18", "model.teacher_arch": "resnet34",
    "optim.name": "sgd", "optim.lr": 0.01, "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
    "optim.schedule": "constant", "optim.clip_grad": 35.0,
    "train.epochs": 2, "train.steps_per_epoch": 3, "train.log_every": 2,
    "eval.kind": "coco", "eval.split": "test", "eval.max_items": 8, "eval.batch_size": 4,
    "resources.cpus_per_worker": 1,
}
SMOKE_TEACHER: dict[str, Any] = {**ALONE, "model.arch": "resnet34", "model.teacher_arch": "",
                                 "train.steps_per_epoch": 6, "resources.cpus_per_worker": 2}


MINI_LR = 1e-3
# chosen on val among 0, 5e-8, 5e-7, 5e-6 and 5e-5 with the full method (docs/methods/mkd.md
# §2.10): val AP 0.265, 0.269, 0.275, 0.294, 0.285; the best is FGD's own 5e-6
MINI_W_GLOBAL = 5e-6
MINI_TEACHER_STEPS = 1200
MINI: dict[str, Any] = {
    "method": "mkd", "data.dataset": "shapes_det", "data.root": str(SHARED_DATA),
    "data.image_size": 128, "data.batch_size": 8, "model.arch": "resnet18",
    "model.teacher_arch": "resnet34", _M + "fpn_channels": 64, _M + "teacher_fpn_channels": 64,
    _M + "decoder_dim": 128, _M + "decoder_heads": 4, _M + "w_global": MINI_W_GLOBAL,
    "optim.name": "adamw", "optim.lr": MINI_LR, "optim.weight_decay": 0.05,
    "optim.schedule": "cosine", "optim.warmup_epochs": 0.2, "optim.min_lr": 0.0,
    "optim.clip_grad": 35.0, "train.epochs": 2, "train.steps_per_epoch": 200,
    "train.log_every": 50, "eval.kind": "coco", "eval.split": "test", "eval.max_items": 0,
    "eval.batch_size": 16, "resources.cpus_per_worker": 1,
}
MINI_TEACHER: dict[str, Any] = {**ALONE, "model.arch": "resnet34", "model.teacher_arch": "",
                                "train.epochs": 6, "train.steps_per_epoch": MINI_TEACHER_STEPS // 6,
                                "eval.every": 6, "resources.cpus_per_worker": 2}


def _coco(student: str) -> dict[str, Any]:
    return {
        "method": "mkd", "data.dataset": "coco", "data.image_size": 800, "data.batch_size": 16,
        "data.loader_workers": 4, "model.arch": student, "model.teacher_arch": "resnet101",
        "model.pretrained": True,
        "optim.name": "sgd", "optim.lr": 0.01, "optim.momentum": 0.9, "optim.weight_decay": 1e-4,
        "optim.schedule": "step", "optim.milestones": (16.0, 22.0), "optim.gamma": 0.1,
        "optim.warmup_epochs": 0.07, "optim.min_lr": 0.0, "optim.clip_grad": 35.0,
        "train.epochs": 24, "train.amp": "auto", "train.log_every": 50,
        "eval.kind": "coco", "eval.split": "test", "eval.batch_size": 4,
        "resources.num_workers": 8, "resources.gpus_per_worker": 1.0,
        "resources.cpus_per_worker": 6,
    }


PRESETS: dict[str, dict[str, Any]] = {"smoke": SMOKE, "mini": MINI, "coco": _coco("resnet50"),
                                      "coco_r18": _coco("resnet18")}
TEACHER: dict[str, dict[str, Any]] = {
    "smoke": SMOKE_TEACHER,
    "mini": MINI_TEACHER,
    "coco": {**ALONE, "model.arch": "resnet101", "model.teacher_arch": ""},
    "coco_r18": {**ALONE, "model.arch": "resnet101", "model.teacher_arch": ""},
}

# COCO val2017 box AP (%) of the paper's students (docs/methods/mkd.md §2.5; the MKD abstract).
PAPER = {"coco": {"alone": "37.4", "mkd": "41.5", "fgd": "FGD 40.7 / MGD 41.0"},
         "coco_r18": {"alone": "33.4", "mkd": "37.5"}}


def paper_number(key: str, preset: str) -> str:
    return PAPER.get(preset, {}).get(key, "")


# (label, paper key, overrides): the ablation ladder.
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("Student alone", "alone", ALONE),
    ("Feature MSE, no masking (FGD-style, 1x1 align)", "fgd",
     {_M + "w_global": 0.0, _M + "mask_ratio": 0.0, _M + "decoder_depth": 0}),
    ("+ masking", "", {_M + "w_global": 0.0, _M + "decoder_depth": 0}),
    ("+ adaptive decoder", "", {_M + "w_global": 0.0}),
    ("+ global loss (MKD full)", "mkd", {}),
)

# the mini tier's rows, 3 seeds: the three (student alone, FGD-style MSE, MKD full). An
# hour on 2 cores holds no fourth row; masking + decoder without the global term was scored on
# val while choosing MINI_W_GLOBAL (docs/methods/mkd.md §2.10)
MINI_ROWS = tuple(r for r in ROWS if r[1] in ("alone", "fgd", "mkd"))
SEEDS = {"mini": (0, 1, 2)}
# the paper's claims, by paper key: MKD beats the student alone (the headline) and FGD (the
# abstract's numbers; its ablation table is not retrieved, so no claim about the middle rows)
CLAIMS = (("mkd", "alone"), ("mkd", "fgd"))


def rows_for(preset: str) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    return MINI_ROWS if preset == "mini" else ROWS


# TPE over lambda, gamma, mask ratio and decoder depth (docs/methods/mkd.md §2.2 / docs/searching.md §6), on the last row.
SPACE = method_space("mkd", ("w_feat", "w_global", "mask_ratio", "decoder_depth"))
BUDGET = {"smoke": Budget(4, 1, 2), "mini": Budget(1, 1, 2), "coco": Budget(12, 12, 2), "coco_r18": Budget(12, 12, 2)}
