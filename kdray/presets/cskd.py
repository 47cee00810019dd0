"""Presets of the Cumulative Spatial KD ablation (studies/cskd_ablation.py).

- `smoke`: CIFAR-10 (the JPEG copy in ../shared/data), a 3-block CNN teacher (4x4 dense grid)
  trained as the study's first stage, a 96-d 4-block DeiT with 4-px patches (8x8 grid, pooled
  2x2 like the paper's 14x14 -> 7x7), CPU, a few minutes. Lighter recipe: pad-crop + flip, no
  mixing, label smoothing 0.1, 2 x 20 steps of 64 images, evaluation on 1,000 evenly spaced
  test images.
- `mini`: evidence on real data within an hour on 2 CPU cores: the same data, teacher and student
  as `smoke`, longer. Teacher conv3: 4 x 375 steps of 128 images (~3.8 epochs), a stage registered
  with its measured top-1. Rows DeiT no distillation / DeiT hard distillation / CSKD (CKF linear)
  x seeds 0, 1, 2: 4 x 250 steps of 64 images (~1.3 epochs, AdamW 2e-3, cosine), two trials at a
  time, one core each; evaluated on all 10,000 test images after the last epoch. No search. What
  differs from the paper's recipe: CIFAR-10 at 32 px instead of ImageNet at 224, a 4-block
  96-d DeiT instead of DeiT-Ti, a 3-block CNN teacher instead of RegNetY-16GF, ~1.3 epochs
  instead of 300, no RandAugment / mixing / repeated augmentation; so the paper column carries
  the ImageNet DeiT-Ti cells, labelled.
- `imagenet` (DeiT-Ti), `imagenet_s`, `imagenet_b`: the official configs (docs/methods/cskd.md §4.3):
  RegNetY-16GF teacher (timm `regnety_160.deit_in1k`, = DeiT's regnety_160-a5fe301d.pth, from the
  hub unless model.teacher_ckpt is set), 300 epochs, AdamW, cosine, 5 warm-up epochs, min lr
  1e-5, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / CutMix 1.0 (switch 0.5),
  label smoothing 0.1, repeated augmentation x3, drop path 0, 8 GPUs per trial.
  Not reproduced: model EMA (the official evaluation uses the raw model anyway), warm-up from
  1e-6 (ours starts at 0), bicubic resizing at evaluation (ours bilinear).
"""

from __future__ import annotations

from typing import Any

from kdray.presets import SHARED_DATA, method_space
from kdray.search import Budget

SMOKE: dict[str, Any] = {
    "method": "cskd", "data.dataset": "cifar10", "data.root": str(SHARED_DATA),
    "data.image_size": 32, "data.batch_size": 64, "data.augment": "basic",
    "model.arch": "vit_micro_p4_32", "model.teacher_arch": "conv3",
    "optim.name": "adamw", "optim.lr": 2e-3, "optim.weight_decay": 0.05, "optim.min_lr": 1e-5,
    "train.epochs": 2, "train.steps_per_epoch": 20, "train.log_every": 10,
    "eval.kind": "top1", "eval.split": "test", "eval.max_items": 1000,
}
# The smoke teacher: the same data, trained with cross-entropy as the study's first stage.
SMOKE_TEACHER: dict[str, Any] = {
    "method": "ce", "model.arch": "conv3", "train.epochs": 2, "train.steps_per_epoch": 80,
    "data.batch_size": 128, "resources.cpus_per_worker": 2, "eval.max_items": 0,
}

MINI: dict[str, Any] = {
    **SMOKE, "train.epochs": 4, "train.steps_per_epoch": 250, "train.log_every": 50,
    "eval.max_items": 0, "eval.every": 4, "resources.cpus_per_worker": 1,
}
MINI_TEACHER: dict[str, Any] = {**SMOKE_TEACHER, "train.epochs": 4, "train.steps_per_epoch": 375,
                                "eval.every": 4}
TEACHER: dict[str, dict[str, Any]] = {"smoke": SMOKE_TEACHER, "mini": MINI_TEACHER}


def _imagenet(arch: str, batch: int, lr: float) -> dict[str, Any]:
    return {
        "method": "cskd", "data.dataset": "imagenet", "data.image_size": 224,
        "data.batch_size": batch, "data.loader_workers": 8, "data.augment": "deit",
        "data.global_scale": (0.08, 1.0), "data.rand_augment": "rand-m9-mstd0.5-inc1",
        "data.random_erasing": 0.25, "data.mixup_alpha": 0.8, "data.cutmix_alpha": 1.0,
        "data.mix_prob": 1.0, "data.mix_switch_prob": 0.5, "data.repeated_aug": 3,
        "model.arch": arch, "model.drop_path": 0.0, "model.teacher_arch": "regnety_160.deit_in1k",
        "optim.name": "adamw", "optim.lr": lr, "optim.weight_decay": 0.05,
        "optim.schedule": "cosine", "optim.warmup_epochs": 5.0, "optim.min_lr": 1e-5,
        "train.epochs": 300, "train.amp": "auto", "train.log_every": 50,
        "eval.kind": "top1", "eval.split": "test", "eval.batch_size": 256,
        "resources.num_workers": 8, "resources.gpus_per_worker": 1.0,
        "resources.cpus_per_worker": 10,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": SMOKE,
    "mini": MINI,
    "imagenet": _imagenet("deit_tiny_distilled_patch16_224", 1024, 1e-3),   # cskd_tiny.py
    "imagenet_s": _imagenet("deit_small_distilled_patch16_224", 512, 5e-4),  # cskd_small.py
    "imagenet_b": _imagenet("deit_base_distilled_patch16_224", 256, 2.5e-4),  # cskd_base.py
}

# ImageNet-1k top-1 (%) after 300 epochs (docs/methods/cskd.md §4.5): DeiT without distillation (DeiT
# paper, recalled), DeiT hard distillation and CSKD (official README).
PAPER = {"deit": {"Ti": "72.2", "S": "79.8", "B": "81.8"},
         "deit_hard": {"Ti": "74.5", "S": "81.2", "B": "83.4"},
         "cskd": {"Ti": "76.3", "S": "82.3", "B": "83.8"}}
SIZE = {"imagenet": "Ti", "imagenet_s": "S", "imagenet_b": "B"}


def paper_number(key: str, preset: str) -> str:
    """The paper's number for a row: the preset's model size, or all three (ImageNet) for smoke."""
    if key not in PAPER:
        return ""
    if preset in SIZE:
        return PAPER[key][SIZE[preset]]
    if preset == "mini":
        return f"IN-1k Ti {PAPER[key]['Ti']}"
    return "IN-1k " + "/".join(f"{s} {v}" for s, v in PAPER[key].items())


_M = "method_cfg."
# (label, paper key, overrides): the ablation ladder of the study.
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("DeiT no distillation", "deit", {_M + "w_distill": 0.0, _M + "w_cskd": 0.0}),
    ("DeiT hard distillation", "deit_hard", {_M + "w_cskd": 0.0}),
    ("Cumulative Spatial KD alpha=1 local only", "",
     {_M + "alpha_schedule": "constant", _M + "alpha_start": 1.0}),
    ("Cumulative Spatial KD alpha=0 global only", "",
     {_M + "alpha_schedule": "constant", _M + "alpha_start": 0.0}),
    ("Cumulative Spatial KD CKF linear", "cskd", {_M + "alpha_schedule": "linear"}),
    ("Cumulative Spatial KD CKF x2", "", {_M + "alpha_schedule": "x2"}),
    ("Cumulative Spatial KD CKF cos", "", {_M + "alpha_schedule": "cos"}),
)

# TPE over the loss weights and the fusion schedule (docs/searching.md §6), on top of the last row;
# the ranges are CSKDConfig.SEARCH's.
SPACE = method_space("cskd", ("w_cskd", "w_distill", "alpha_schedule", "alpha_end"))
# the mini tier's rows: the paper's headline comparison only (CSKD > DeiT hard > DeiT)
MINI_ROWS = tuple(r for r in ROWS if r[1] in ("deit", "deit_hard", "cskd"))
SEEDS = {"mini": (0, 1, 2)}
# the paper's claims, by paper key: CSKD > DeiT hard distillation > DeiT (Table 1)
CLAIMS = (("cskd", "deit_hard"), ("deit_hard", "deit"))


def rows_for(preset: str) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    return MINI_ROWS if preset == "mini" else ROWS


BUDGET = {"smoke": Budget(4, 1, 2), "mini": Budget(1, 1, 2), "imagenet": Budget(16, 100, 3),
          "imagenet_s": Budget(16, 100, 3), "imagenet_b": Budget(16, 100, 3)}
