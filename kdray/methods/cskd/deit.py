"""Distilled DeiT student (timm `VisionTransformerDistilled`) with dense patch logits for CSKD.

One forward returns everything the loss needs: [CLS]-head logits, distillation-token logits and,
when asked, the distillation head applied to every patch token (dense logits, (B, N, C), no new
parameters; CSKD `vision_transformer.py`). Without distillation a plain timm ViT is built (no
distillation token or head that nothing would train).

Architectures: the timm DeiT names (`deit_{tiny,small,base}_distilled_patch16_224`, built from
scratch unless model.pretrained) or a kdray ViT spec name (`vit_tiny_p4_32`, `vit_nano_p4_32`,
`vit_micro_p4_32` registered here) for 32-px runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from kdray.modules.backbones import register_backbone
from kdray.modules.vit import VIT_SPECS, ViTSpec, build_vit

# CPU smoke runs at 32 px: 96-d, 4 blocks, 3 heads, patch 4 (8x8 grid), ~0.45M parameters.
DEIT_SPECS: dict[str, ViTSpec] = {"vit_micro_p4_32": ViTSpec(32, 4, 96, 4, 3)}


@register_backbone("vit_micro_p4_32")
def _micro(*, pretrained: bool = False, drop_path: float = 0.0, image_size: int | None = None
           ) -> nn.Module:
    if pretrained:
        raise ValueError("vit_micro_p4_32 has no pretrained weights")
    return build_vit(DEIT_SPECS["vit_micro_p4_32"], drop_path=drop_path, image_size=image_size)


def spec_of(arch: str) -> ViTSpec | None:
    return DEIT_SPECS.get(arch) or VIT_SPECS.get(arch)


def undistilled_name(arch: str) -> str:
    """The timm name of the same ViT without a distillation token."""
    return arch.replace("_distilled", "")


def build_deit(arch: str, num_classes: int, *, distilled: bool, image_size: int,
               drop_path: float = 0.0, pretrained: bool = False) -> nn.Module:
    """A timm ViT with `num_classes` heads: `VisionTransformerDistilled` when `distilled`.

    Raises:
        ValueError: unknown name, or a timm model that is not a (distilled) DeiT/ViT.
    """
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    spec = spec_of(arch)
    if spec is not None:
        if pretrained:
            raise ValueError(f"{arch} has no pretrained weights")
        cls = VisionTransformerDistilled if distilled else VisionTransformer
        return cls(img_size=image_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
                   depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio,
                   qkv_bias=True, num_classes=num_classes, drop_path_rate=drop_path,
                   norm_layer=partial(nn.LayerNorm, eps=1e-6))
    import timm

    name = arch if distilled else undistilled_name(arch)
    if name not in timm.list_models():
        raise ValueError(f"unknown ViT {name!r}: use a timm DeiT name (e.g. "
                         f"deit_tiny_distilled_patch16_224) or one of "
                         f"{sorted({**VIT_SPECS, **DEIT_SPECS})}")
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                              drop_path_rate=drop_path, img_size=image_size)
    if distilled != isinstance(model, VisionTransformerDistilled):
        raise ValueError(f"{name} is {'not ' if distilled else ''}a distilled DeiT")
    return model


@dataclass
class DeiTOutput:
    cls: Tensor              # (B, C) [CLS] head logits
    dist: Tensor | None      # (B, C) distillation-token head logits
    dense: Tensor | None     # (B, N, C) distillation head on each patch token
    patch_mean: Tensor | None  # (B, C) distillation head on the mean patch token
    grid: tuple[int, int]    # patch grid (h, w), h * w = N
    feat: Tensor             # (B, D) [CLS] token after the final norm


class DeiTStudent(nn.Module):
    """Single DDP entry point of the CSKD student.

    Args:
        vit: from `build_deit`.
        dense: compute the dense patch logits in training mode (CSKD's L_CSKD).
    """

    def __init__(self, vit: nn.Module, *, dense: bool) -> None:
        super().__init__()
        self.vit = vit
        self.distilled = getattr(vit, "dist_token", None) is not None
        self.dense = dense and self.distilled
        self.prefix = int(vit.num_prefix_tokens)
        self.num_features = int(vit.embed_dim)

    def forward(self, x: Tensor) -> DeiTOutput:
        """(B, 3, H, W) -> DeiTOutput. `patch_mean` (the inference head, equal to the mean of
        the dense logits because the head is linear) is filled in eval mode only."""
        t = self.vit.forward_features(x)                     # (B, prefix + N, D)
        grid = tuple(int(g) for g in self.vit.patch_embed.grid_size)
        cls = self.vit.head(t[:, 0])
        if not self.distilled:
            return DeiTOutput(cls, None, None, None, grid, t[:, 0])
        head = self.vit.head_dist
        patches = t[:, self.prefix:]
        dense = head(patches) if self.training and self.dense else None
        patch_mean = None if self.training else head(patches.mean(dim=1))
        return DeiTOutput(cls, head(t[:, 1]), dense, patch_mean, grid, t[:, 0])

    def no_weight_decay(self) -> set[str]:
        """Parameter names (in this module) DeiT keeps out of weight decay."""
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}


def average_heads(out: DeiTOutput, *, use_dist: bool, use_dense: bool) -> Tensor:
    """Inference logits (B, C): the mean of the heads that were trained ([CLS]; + distillation
    token; + mean of the dense patch logits: (x_cls + x_dist + mean_patches) / 3 in CSKD)."""
    heads = [out.cls]
    if use_dist and out.dist is not None:
        heads.append(out.dist)
    if use_dense and out.patch_mean is not None:
        heads.append(out.patch_mean)
    return torch.stack(heads).mean(dim=0)
