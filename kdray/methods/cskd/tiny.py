"""Smallest CSKD configuration for the contract tests (see kdray/methods/ce/tiny.py): a 3-block
CNN teacher (2x2 dense grid at 16 px) and a patch-4 DeiT student."""

from __future__ import annotations

import torch

from kdray.modules.backbones import Classifier, build_backbone


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    teacher = Classifier(build_backbone("conv3", image_size=16), num_classes)
    path = tmp / "cnn_teacher.pt"
    torch.save({"model": {"student": teacher.state_dict()}}, path)
    return {"model.arch": "vit_nano_p4_32", "data.image_size": 16, "data.patch_size": 4,
            "model.teacher_arch": "conv3", "model.teacher_ckpt": str(path)}
