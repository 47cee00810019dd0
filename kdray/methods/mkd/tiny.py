"""Smallest MKD configuration for the contract tests (see kdray/methods/ce/tiny.py): RetinaNet-R18
student and teacher with a narrow FPN and decoder at 64 px; batches carry one box per image."""

from __future__ import annotations

import torch

from kdray.methods.mkd.method import MKD

SMALL = {"method_cfg.fpn_channels": 16, "method_cfg.teacher_fpn_channels": 16,
         "method_cfg.decoder_dim": 16, "method_cfg.decoder_heads": 2,
         "data.image_size": 64, "data.patch_size": 4, "model.arch": "resnet18"}


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    teacher = MKD(make_config({"method": "mkd", **SMALL, "method_cfg.w_feat": 0.0,
                               "method_cfg.w_global": 0.0}), num_classes=num_classes)
    path = tmp / "mkd_teacher.pt"
    torch.save({"model": teacher.checkpoint_state()}, path)
    return {**SMALL, "model.teacher_ckpt": str(path)}


def tiny_extra(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Detection targets: one box per image, its class the image label."""
    s = images.shape[-1]
    return {"targets": [{"boxes": torch.tensor([[2.0, 4.0, s - 8.0, s - 2.0]]),
                         "labels": y.view(1)} for y in labels]}
