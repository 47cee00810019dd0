"""Smallest SMKD configuration for the contract tests (see kdray/methods/ce/tiny.py): a nano ViT
on 2 global + 2 local crops with block masks, phase 2 from scratch, all three terms on."""

from __future__ import annotations


def tiny_config(name, tmp, num_classes, make_config) -> dict:
    return {"model.arch": "vit_nano_p4_32", "data.image_size": 32, "data.local_size": 16,
            "data.patch_size": 4, "data.augment": "multicrop", "data.local_crops": 2,
            "data.mask_prob": 0.5, "method_cfg.phase": "supervised",
            "method_cfg.allow_scratch": True, "method_cfg.out_dim": 64,
            "method_cfg.hidden_dim": 32, "method_cfg.bottleneck_dim": 16,
            "method_cfg.w_mim": 1.0}
