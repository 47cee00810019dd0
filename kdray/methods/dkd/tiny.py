"""Smallest DKD configuration for the contract tests (see kdray/methods/ce/tiny.py): a conv2
student and a conv2 teacher checkpoint written to `tmp`."""

from __future__ import annotations

import torch

from kdray.modules.backbones import Classifier, build_backbone


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    teacher = Classifier(build_backbone("conv2", image_size=16), num_classes)
    path = tmp / "dkd_teacher.pt"
    torch.save({"model": {"student": teacher.state_dict()}}, path)
    return {"model.arch": "conv2", "data.image_size": 16, "data.patch_size": 4,
            "model.teacher_ckpt": str(path)}
