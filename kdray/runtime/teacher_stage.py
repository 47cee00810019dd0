"""A study's teacher, trained once as a stage and registered.

Every study that trains its own teacher (CSKD, DKD, MKD, SSKD on the CPU presets) does the same
four things: run the stage (reused on re-runs), read the teacher's score on its eval split, write
a card beside the checkpoint and into `<results_dir>/teachers.json` (checksum, arch, dataset,
classes, score), and print one line. `teacher_stage` is those four things; the study hook keeps
only what differs (which config, which suffix, what the rows do with the checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kdray.config import ExperimentConfig
from kdray.data import num_train_classes
from kdray.modules.teachers import write_card
from kdray.runtime import driver


@dataclass(frozen=True)
class RegisteredTeacher:
    checkpoint: str
    score: float            # as the stage logged it: top-1 in %, or box AP in [0, 1] (its card
                            # holds AP x 100, as every card holds a %)
    text: str               # "top-1 71.20%" / "AP 0.917": what the study's description says


def teacher_stage(study: Any, args: Any, cfg: ExperimentConfig, suffix: str, *,
                  metric: str = "top1", arch: str = "", ss_transforms: str = "",
                  ss_acc_key: str = "") -> RegisteredTeacher:
    """Train teacher `cfg` as the study's stage `suffix` (`driver.study_stage`), register it with
    its `metric` on `cfg.eval.split` and print it. `arch` names the teacher when `cfg.model.arch`
    does not (SSKD's T2 stage trains an SS module on a frozen `arch`); `ss_acc_key` is the metric
    holding its SS accuracy."""
    stage = driver.study_stage(study, args, cfg, suffix)
    score = stage.metrics.get(cfg.eval.key(metric), float("nan"))
    box = metric == "AP"
    arch = arch or cfg.model.arch
    card = write_card(stage.checkpoint, arch=arch, dataset=cfg.data.dataset,
                      num_classes=num_train_classes(cfg), top1=100 * score if box else score,
                      metric=metric, eval_split=cfg.eval.split, ss_transforms=ss_transforms,
                      ss_acc=stage.metrics.get(ss_acc_key, -1.0) if ss_acc_key else -1.0,
                      registry=os.path.join(args.results_dir, "teachers.json"))
    text = f"AP {score:.3f}" if box else f"top-1 {score:.2f}%"
    name = f"RetinaNet-{arch}" if box else arch
    ss = f", SS accuracy {card.ss_acc:.1f}%" if ss_acc_key else ""
    print(f"[kdray] teacher {name}: {text}{ss} ({stage.checkpoint}, sha256 {card.sha256[:12]})")
    return RegisteredTeacher(stage.checkpoint, score, f"{name}: {text}")
