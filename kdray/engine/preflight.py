"""Every check that can fail before any Ray resource starts (no Ray here: the runtime and the
plain-process entry points call `preflight`)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

from kdray.checks import ConfigError
from kdray.config import ExperimentConfig
from kdray.data import DATASETS, build_eval_dataset, check_data, num_train_classes
from kdray.methods import METHODS
from kdray.modules.backbones import backbone_exists
from kdray.modules.teachers import check_teacher_card
from kdray.types import DataInfo


def preflight(cfg: ExperimentConfig) -> None:
    """Data present, method settings compatible (teacher checkpoints, phase hand-offs), backbone
    names known; raises ConfigError (or DataNotFoundError) naming the problem."""
    method = METHODS[cfg.method]
    if (cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0) and not method.supports_mix:
        raise ConfigError(f"data.mixup_alpha/cutmix_alpha: method {cfg.method!r} does not apply "
                          "mixup/CutMix (methods that do: "
                          f"{sorted(k for k, m in METHODS.items() if m.supports_mix)})")
    check_data(cfg)
    if cfg.train.init_from and not os.path.isfile(cfg.train.init_from) and not os.path.isfile(
            os.path.join(cfg.train.init_from, "checkpoint.pt")):
        raise ConfigError(f"train.init_from: no checkpoint at {cfg.train.init_from!r}")
    if not backbone_exists(cfg.model.arch):
        raise ConfigError(f"model.arch: unknown backbone {cfg.model.arch!r} (kdray backbones or "
                          "any timm.list_models() name)")
    method_preflight(cfg)


def data_info(cfg: ExperimentConfig) -> DataInfo:
    """What methods may know about the data (see `kdray.types.DataInfo`)."""
    spec = DATASETS[cfg.data.dataset]
    return DataInfo(num_classes=num_train_classes(cfg), detection=hasattr(spec, "train_loader"),
                    top1=lambda fn, max_items=0: measure_top1(fn, cfg, max_items))


@torch.no_grad()
def measure_top1(logits_fn: Callable[[Tensor], Tensor], cfg: ExperimentConfig,
                 max_items: int = 0) -> float:
    """Top-1 (%) of `logits_fn` ((B, 3, H, W) -> (B, C)) on cfg.eval.split, on `max_items`
    evenly spaced images (0 = all), on the CPU of the caller."""
    from torch.utils.data import DataLoader, Subset

    data = build_eval_dataset(cfg)
    n = len(data)
    if 0 < max_items < n:
        data = Subset(data, [i * n // max_items for i in range(max_items)])
    hits = total = 0
    for x, y in DataLoader(data, batch_size=cfg.eval.batch_size):
        hits += int((logits_fn(x).argmax(dim=1) == torch.as_tensor(y)).sum())
        total += len(y)
    if total == 0:
        raise ConfigError(f"eval.split {cfg.eval.split!r} is empty: cannot measure the teacher")
    return 100.0 * hits / total


def method_preflight(cfg: ExperimentConfig) -> None:
    """The teacher's registry card (`teacher_card`), then the method's own checks
    (`Method.preflight`), with the data facts they need."""
    info = data_info(cfg)
    teacher_card(cfg, info)
    METHODS[cfg.method].preflight(cfg, info)


def teacher_card(cfg: ExperimentConfig, data: DataInfo) -> None:
    """For every method: when `model.teacher_ckpt` is a file with a card beside it, the card must
    match the file (checksum), `model.teacher_arch` (default `model.arch`), `data.dataset`, the
    class count and the method's expectations (`Method.teacher_card_checks`)."""
    ckpt = cfg.model.teacher_ckpt
    if not ckpt or not os.path.isfile(ckpt):
        return  # no teacher, or the method reports the missing file in its own words
    check_teacher_card(ckpt, arch=cfg.model.teacher_arch or cfg.model.arch,
                       dataset=cfg.data.dataset, num_classes=data.num_classes,
                       **METHODS[cfg.method].teacher_card_checks(cfg))
