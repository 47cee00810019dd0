"""Smallest SSKD configurations for the contract tests (see kdray/methods/ce/tiny.py): a conv2
teacher; `sskd` reads a T2 file (teacher + SS head), `sskd_teacher` a T1 classifier file."""

from __future__ import annotations

import torch

from kdray.methods.sskd.method import ss_head
from kdray.modules.backbones import Classifier, build_backbone


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    teacher = Classifier(build_backbone("conv2", image_size=32), num_classes)
    model = {"student": teacher.state_dict()}
    if name == "sskd":
        model = {"teacher": teacher.state_dict(), "ss_head": ss_head(32).state_dict()}
    path = tmp / "sskd_teacher.pt"
    torch.save({"model": model}, path)
    return {"model.arch": "conv2", "data.image_size": 16, "data.patch_size": 4,
            "model.teacher_arch": "conv2", "model.teacher_ckpt": str(path)}
