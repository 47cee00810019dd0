"""Presets of the DKD study (studies/dkd_ablation.py): the teacher classifier is trained once as a
tracked stage (method `ce`) unless `model.teacher_ckpt` is given, then the rows CE, KD, TCKD only,
NCKD only and DKD, then a TPE search (ASHA) over alpha (w_tckd), beta (w_nckd) and T (tau).

- `smoke`: CIFAR-10 (the JPEG copy in ../shared/data; generated data where it is absent), conv4
  teacher -> conv2 student at 16 px, CPU, minutes: teacher 2 x 80 steps of 128 images, rows
  2 x 50 steps of 64 images, evaluation on 1,000 evenly spaced test images. The warm-up is
  shortened to the 2 epochs (official: 20 of 240).
- `cifar100` (ResNet32x4 -> ResNet8x4) and `cifar100_<pair>`: the official CIFAR-100 recipe
  (mdistiller configs/cifar100/dkd/*.yaml): SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch
  64, 240 epochs, x0.1 at 150/180/210; CE weight 1, alpha 1, T 4, 20 warm-up epochs; beta 8 by
  default, 6 for the WRN-40-2 students and 2 for ResNet56 -> ResNet20 and ResNet110 -> ResNet32
  (read from those configs). The teacher is trained here for 240 epochs with CE (the official
  code downloads its own pretrained teachers; pass one with --set model.teacher_ckpt=...).
  Not reproduced: best-epoch test accuracy (we report the last epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdray.presets import method_space
from kdray.search import Budget

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_M = "method_cfg."
_SGD = {"optim.name": "sgd", "optim.momentum": 0.9, "optim.weight_decay": 5e-4,
        "optim.schedule": "step", "optim.gamma": 0.1, "optim.min_lr": 0.0}


def _smoke_data() -> dict[str, Any]:
    if (SHARED_DATA / "cifar10_jpg").is_dir():
        return {"data.dataset": "cifar10", "data.root": str(SHARED_DATA)}
    return {"data.dataset": "fscil_synthetic", "data.train_split": "train",
            "data.synthetic_per_class": 36}


SMOKE: dict[str, Any] = {
    **_smoke_data(), "data.image_size": 16, "data.batch_size": 64, "data.augment": "basic",
    "model.arch": "conv2", "model.teacher_arch": "conv4", **_SGD, "optim.lr": 0.05,
    "optim.milestones": (1.5,), "train.epochs": 2, "train.steps_per_epoch": 50,
    "train.log_every": 5, _M + "warmup_epochs": 2.0,
    "eval.kind": "top1", "eval.split": "test", "eval.max_items": 1000,
}

# (teacher, student, beta, paper KD top-1, paper DKD top-1): CIFAR-100, official README.
PAIRS: dict[str, tuple[str, str, float, str, str]] = {
    "cifar100": ("resnet32x4", "resnet8x4", 8.0, "73.33", "76.32"),
    "cifar100_res56_res20": ("resnet56", "resnet20", 2.0, "70.66", "71.97"),
    "cifar100_res110_res32": ("resnet110", "resnet32", 2.0, "73.08", "74.11"),
    "cifar100_wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2", 6.0, "74.92", "76.23"),
    "cifar100_wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1", 6.0, "73.54", "74.81"),
    "cifar100_vgg13_vgg8": ("vgg13", "vgg8", 8.0, "72.98", "74.68"),
}


def _cifar100(teacher: str, student: str, beta: float) -> dict[str, Any]:
    return {
        "data.dataset": "cifar100", "data.image_size": 32, "data.batch_size": 64,
        "data.augment": "basic", "data.loader_workers": 4, "model.arch": student,
        "model.teacher_arch": teacher, **_SGD, "optim.lr": 0.05,
        "optim.milestones": (150.0, 180.0, 210.0), "train.epochs": 240, "train.log_every": 100,
        _M + "w_nckd": beta, "eval.kind": "top1", "eval.split": "test",
        "resources.gpus_per_worker": 1.0, "resources.cpus_per_worker": 4,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": SMOKE, **{k: _cifar100(t, s, b) for k, (t, s, b, _, _) in PAIRS.items()}}

# The teacher stage on top of a preset (its architecture is the preset's teacher_arch).
TEACHER: dict[str, dict[str, Any]] = {
    "smoke": {"method": "ce", "train.epochs": 2, "train.steps_per_epoch": 80,
              "data.batch_size": 128, "resources.cpus_per_worker": 2, "eval.max_items": 0},
    **{k: {"method": "ce"} for k in PAIRS},
}

# (label, paper key, overrides): the decoupling ladder (paper Table 1 and the main tables).
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("CE student", "", {"method": "ce"}),
    ("KD (tau 4, CE 0.1 / KD 0.9)", "kd", {"method": "kd"}),
    ("TCKD only (beta 0)", "", {_M + "w_nckd": 0.0}),
    ("NCKD only (alpha 0)", "", {_M + "w_tckd": 0.0}),
    ("DKD", "dkd", {}),
)


def paper_number(key: str, preset: str) -> str:
    """The official CIFAR-100 number of the preset's pair (none for smoke: another data set)."""
    if preset not in PAIRS or key not in ("kd", "dkd"):
        return ""
    return PAIRS[preset][3] if key == "kd" else PAIRS[preset][4]


# TPE over alpha, beta and T on top of the DKD row; ranges are DKDConfig.SEARCH's.
SPACE = method_space("dkd", ("w_tckd", "w_nckd", "tau"))
BUDGET = {"smoke": Budget(2, 1, 2), **{k: Budget(16, 60, 3) for k in PAIRS}}
