"""Smallest M2SD configuration for the contract tests (see kdray/methods/ce/tiny.py): the
smallest CIFAR ResNet (the method needs per-stage maps)."""

from __future__ import annotations


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    return {"model.arch": "resnet8", "data.image_size": 16, "data.patch_size": 4}
