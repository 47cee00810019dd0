"""Presets of the M2SD ablation (studies/m2sd_ablation.py); docs/methods/m2sd.md §5.3-5.4.

Every preset is (common, stage 1, stage 2): stage 1 is cross-entropy base training on the base
session (data.train_split=base), run once as the study's first stage; every stage-2 row starts
from its checkpoint. Evaluation is the FSCIL session runner (eval.kind=fscil: prototypes of frozen
features, cosine), i.e. M2SD's stage 3.

- `smoke`: generated data with the CIFAR-100 protocol shape (fscil_synthetic: 100 classes,
  60 base + 8 x 5-way 5-shot; 30 train / 6 test images per class), ResNet-20, 32 px, CPU, ~7
  minutes on 2 cores: stage 1 4 x 25 steps of 64 images (~3.5 passes over the base session),
  stage-2 trials 2 x 12 steps of 32 images (lr 1e-2: too few steps for 1e-3 to move anything).
- `mini`: evidence on real data within an hour on 2 CPU cores: `fscil_cifar10` (the CIFAR-10
  JPEGs in ../shared/data in the FSCIL protocol shape: 6 base classes, 2 sessions of 2-way
  5-shot), ResNet-20, 32 px. Stage 1: 4 x 250 steps of 64 images (SGD Nesterov 0.1, ~0.5 pass
  over the base session), once. Rows prototype baseline / + virtual-class mixing (mixup branch)
  / full M2SD x seeds 0, 1, 2 (stage-2 seeds; all from the one stage-1 model): 2 x 150 steps of
  64 at the paper's stage-2 lr 1e-3, cosine (docs/methods/m2sd.md §5.10: 1e-2 was what made the
  smoke rows lose). No search. What differs from the paper: CIFAR-10 in the CIFAR-100 protocol's
  shape, a short stage 1 and 300 stage-2 steps instead of 100 + 50 epochs; no paper number fits
  this setting, so the reference column names CEC's CIFAR-100 numbers, labelled.
- `cifar100` (ResNet-20, 32 px), `mini_imagenet` (ResNet-18 from scratch, 84 px), `cub200`
  (ImageNet-pretrained ResNet-18, 224 px). Stage 1 = CEC's base training (SGD Nesterov 0.9, lr
  0.1, wd 5e-4, batch 128, 100 epochs, step milestones CIFAR [60, 70], mini [40, 70], CUB
  [30, 40, 60, 80]). Stage 2 = the reproducibility extract (SGD momentum, lr 1e-3, batch 256);
  its epoch count was not retrieved: 50 epochs, cosine [inferred].
"""

from __future__ import annotations

from typing import Any

from kdray.presets import SHARED_DATA, method_space
from kdray.search import Budget

_M = "method_cfg."

SMOKE: dict[str, Any] = {
    "data.dataset": "fscil_synthetic", "data.synthetic_classes": 100,
    "data.synthetic_per_class": 36, "data.train_split": "base", "data.image_size": 32,
    "data.batch_size": 32, "data.augment": "basic", "model.arch": "resnet20",
    "optim.name": "sgd", "optim.momentum": 0.9, "optim.weight_decay": 5e-4,
    "train.log_every": 5, "eval.kind": "fscil", "eval.split": "test",
}
SMOKE_STAGE1: dict[str, Any] = {"optim.lr": 0.1, "optim.nesterov": True, "data.batch_size": 64,
                                "train.epochs": 4, "train.steps_per_epoch": 25, "eval.every": 4,
                                "resources.cpus_per_worker": 2}
SMOKE_STAGE2: dict[str, Any] = {"optim.lr": 1e-2, "train.epochs": 2, "train.steps_per_epoch": 12}

MINI: dict[str, Any] = {
    **SMOKE, "data.dataset": "fscil_cifar10", "data.root": str(SHARED_DATA),
    "data.batch_size": 64, "train.log_every": 50, "resources.cpus_per_worker": 1,
}
for _k in ("data.synthetic_classes", "data.synthetic_per_class"):
    MINI.pop(_k)
MINI_STAGE1: dict[str, Any] = {"optim.lr": 0.1, "optim.nesterov": True, "train.epochs": 4,
                               "train.steps_per_epoch": 250, "eval.every": 4,
                               "resources.cpus_per_worker": 2}
MINI_STAGE2: dict[str, Any] = {"optim.lr": 1e-3, "optim.schedule": "cosine", "optim.min_lr": 0.0,
                               "train.epochs": 2, "train.steps_per_epoch": 150}


def _paper(dataset: str, arch: str, size: int, milestones: tuple[float, ...],
           pretrained: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    common = {
        "data.dataset": dataset, "data.train_split": "base", "data.image_size": size,
        "data.augment": "basic", "data.loader_workers": 8, "model.arch": arch,
        "model.pretrained": pretrained, "optim.name": "sgd", "optim.momentum": 0.9,
        "optim.weight_decay": 5e-4, "train.amp": "auto", "train.log_every": 50,
        "eval.kind": "fscil", "eval.split": "test", "eval.batch_size": 256,
        "resources.num_workers": 1, "resources.gpus_per_worker": 1.0,
        "resources.cpus_per_worker": 8,
    }
    stage1 = {"optim.lr": 0.1, "optim.nesterov": True, "optim.schedule": "step",
              "optim.milestones": milestones, "optim.gamma": 0.1, "data.batch_size": 128,
              "train.epochs": 100, "eval.every": 10}
    stage2 = {"optim.lr": 1e-3, "optim.schedule": "cosine", "optim.min_lr": 0.0,
              "data.batch_size": 256, "train.epochs": 50}
    return common, stage1, stage2


PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "smoke": (SMOKE, SMOKE_STAGE1, SMOKE_STAGE2),
    "mini": (MINI, MINI_STAGE1, MINI_STAGE2),
    "cifar100": _paper("fscil_cifar100", "resnet20", 32, (60.0, 70.0), False),
    "mini_imagenet": _paper("fscil_mini_imagenet", "resnet18", 84, (40.0, 70.0), False),
    "cub200": _paper("fscil_cub200", "resnet18", 224, (30.0, 40.0, 60.0, 80.0), True),
}

# The ablation ladder: each row adds one part of M2SD (all start from the stage-1 checkpoint).
_OFF = {_M + "w_sd": 0.0, _M + "w_at": 0.0}
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("prototype baseline (CE continued)", "cec",
     {_M + "mixup": False, _M + "cutmix": False, _M + "w_ce": 1.0, **_OFF}),
    ("+ mixup branch", "", {_M + "cutmix": False, **_OFF}),
    ("+ CutMix branch", "", {_M + "w_kl": 0.0, **_OFF}),
    ("+ symmetric KL", "", dict(_OFF)),
    ("+ attention enhancement (full M2SD)", "m2sd", {}),
)

# the mini tier's rows: the paper's headline comparison (full M2SD > its prototype baseline)
MINI_ROWS = tuple(r for r in ROWS if r[0] in ("prototype baseline (CE continued)",
                                              "+ mixup branch",
                                              "+ attention enhancement (full M2SD)"))
SEEDS = {"mini": (0, 1, 2)}
CLAIMS = (("m2sd", "cec"),)  # by paper key: full M2SD > the prototype baseline


def rows_for(preset: str) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    return MINI_ROWS if preset == "mini" else ROWS


# Reference numbers (docs/methods/m2sd.md §5.5, [recalled]); M2SD's own table was not retrieved.
REFERENCE = {
    "fscil_cifar100": {"cec": "CEC Avg 59.53 / PD 23.93", "fact": "FACT Avg 62.24 / PD 22.50"},
    "fscil_mini_imagenet": {"cec": "CEC Avg 57.75 / PD 24.37", "fact": "FACT Avg 60.70 / PD 22.07"},
    "fscil_cub200": {"cec": "CEC Avg 61.33 / PD 23.57", "fact": "FACT Avg 64.42 / PD 18.96"},
}
CEC_CIFAR100_SESSIONS = (73.07, 68.88, 65.26, 61.19, 58.09, 55.57, 53.22, 51.34, 49.14)


def reference_note(dataset: str) -> str:
    """What the study's description says of its reference numbers."""
    if dataset == "fscil_cifar10":   # real CIFAR-10, but no FSCIL paper reports on it
        return ("none on CIFAR-10; the paper column shows CIFAR-100's (60 base classes, 8 "
                "sessions), labelled C100, for scale only: another dataset and protocol")
    return "; ".join(REFERENCE.get(dataset, {}).values()) or "none (generated data)"


def paper_number(key: str, dataset: str) -> str:
    """The reference for a row: CEC beside the prototype baseline, CEC and FACT beside M2SD
    (fscil_cifar10, the mini tier: CIFAR-100's, labelled C100)."""
    if dataset == "fscil_cifar10":
        got = paper_number(key, "fscil_cifar100")
        return f"C100 {got}" if got else ""
    ref = REFERENCE.get(dataset)
    if ref is None or not key:
        return ""
    if key == "cec":
        return ref["cec"]
    return f"M2SD not retrieved; {ref['fact']}"


def columns(sessions: int) -> tuple[tuple[str, str], ...]:
    """Results-table columns: per-session accuracy, Avg, PD, base / novel / HM of the last one."""
    per = tuple((f"S{t}", f"fscil_s{t}") for t in range(sessions + 1))
    return per + (("Avg", "fscil_avg"), ("PD", "fscil_pd"), ("base", "fscil_base"),
                  ("novel", "fscil_novel"), ("HM", "fscil_hm"))


# TPE over α and the loss weights (docs/searching.md §6), on top of the full row; the ranges are
# M2SDConfig.SEARCH's. ASHA's grace period counts stage-2 epochs.
SPACE = method_space("m2sd", ("alpha", "w_mix", "w_kl", "w_sd", "w_at"))
BUDGET = {"smoke": Budget(4, 1, 2), "mini": Budget(1, 1, 2), "cifar100": Budget(24, 10, 2),
          "mini_imagenet": Budget(24, 10, 2), "cub200": Budget(24, 10, 2)}
