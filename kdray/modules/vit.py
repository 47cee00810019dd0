"""Vision Transformer backbones for masked self-distillation (iBOT / SMKD).

`MaskedViT` wraps a timm `VisionTransformer` and adds what iBOT-style training needs:

- a learnable mask token that replaces the patch embeddings of masked positions *before* the
  positional embedding is added (so a masked token still knows where it is);
- positional-embedding interpolation for crops of any size (96-px local crops on a 224-px model),
  done here with timm's public `resample_abs_pos_embed`, so any timm ViT works whether or not it was
  built with `dynamic_img_size=True`;
- [CLS] and patch tokens after the final norm, and optionally the last block's [CLS]->patch
  attention (mean over heads, renormalised over patches). That attention is recomputed from the
  last block's q/k projections, so it is exact with timm's fused attention kernels too.

Registered backbone names (plain timm models, usable by any method as (B, C, H, W) -> (B, D)):
`vit_small_p16` (ViT-S/16, the SMKD paper backbone: 384-d, 12 blocks, 6 heads) and
`vit_tiny_p4_32` / `vit_nano_p4_32` (small ViTs for 32-px smoke runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdray.modules.backbones import build_backbone, register_backbone


@dataclass(frozen=True)
class ViTSpec:
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# Shapes of the kdray ViT names; read by SMKD.preflight without building a model.
VIT_SPECS: dict[str, ViTSpec] = {
    "vit_small_p16": ViTSpec(224, 16, 384, 12, 6),   # SMKD models/vision_transformer.py vit_small
    "vit_tiny_p4_32": ViTSpec(32, 4, 192, 6, 3),     # 32-px runs (CIFAR-FS/FC100 at native size)
    "vit_nano_p4_32": ViTSpec(32, 4, 48, 2, 3),      # unit tests and smoke runs
    "vit_micro_p4_28": ViTSpec(28, 4, 96, 4, 3),     # Omniglot mini tier (28 px, 7x7 patches)
}


def build_vit(spec: ViTSpec, *, drop_path: float = 0.0, image_size: int | None = None) -> nn.Module:
    """A timm VisionTransformer with `num_classes=0` (forward gives the (B, D) [CLS] feature)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=image_size or spec.img_size, patch_size=spec.patch_size,
        embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio, qkv_bias=True, num_classes=0, global_pool="token",
        drop_path_rate=drop_path, dynamic_img_size=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6))


def _register(name: str) -> None:
    def factory(*, pretrained: bool = False, drop_path: float = 0.0,
                image_size: int | None = None) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights (SMKD trains from scratch)")
        return build_vit(VIT_SPECS[name], drop_path=drop_path, image_size=image_size)

    register_backbone(name)(factory)


for _name in VIT_SPECS:
    _register(_name)


def vit_patch_size(vit: nn.Module) -> int:
    """Patch size of a timm VisionTransformer (square patches)."""
    ps = vit.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, tuple | list) else ps)


def arch_patch_size(arch: str) -> int | None:
    """Patch size of a backbone name (kdray or timm), or None if it is not a timm ViT."""
    if arch in VIT_SPECS:
        return VIT_SPECS[arch].patch_size
    try:
        return vit_patch_size(build_backbone(arch))
    except (ValueError, AttributeError):
        return None


@dataclass
class ViTOutput:
    cls: Tensor              # (B, D) [CLS] token after the final norm
    patch: Tensor            # (B, N, D) patch tokens after the final norm
    attn: Tensor | None      # (B, N) last-block [CLS]->patch attention, rows sum to 1


class MaskedViT(nn.Module):
    """A timm VisionTransformer with an optional mask token and interpolated positions.

    Args:
        vit: a timm `VisionTransformer` with a class token, no register tokens and a positional
            embedding that covers the class token (the original ViT/DeiT layout).
        mask_token: build the learnable mask token (only when masks will be fed; an unused
            parameter would break DDP without `find_unused_parameters`).
    """

    def __init__(self, vit: nn.Module, *, mask_token: bool = True) -> None:
        super().__init__()
        if getattr(vit, "cls_token", None) is None or getattr(vit, "reg_token", None) is not None \
                or getattr(vit, "no_embed_class", True) or getattr(vit, "pos_embed", None) is None:
            raise ValueError("MaskedViT needs a timm VisionTransformer with a class token, no "
                             "register tokens and a positional embedding covering the class token")
        self.vit = vit
        self.num_features = int(vit.embed_dim)
        self.patch_size = vit_patch_size(vit)
        self.grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        # iBOT initialises its `masked_embed` at zero.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.num_features)) if mask_token else None

    def _tokens(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, C, H, W) images -> (B, 1 + N, D) tokens with positions, before the blocks."""
        pe = self.vit.patch_embed
        x = pe.proj(x)                                   # (B, D, h, w); bypasses the size check
        h, w = x.shape[-2:]
        x = pe.norm(x.flatten(2).transpose(1, 2))        # (B, N, D)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("masks were given but this MaskedViT has no mask token")
            if mask.shape[-2:] != (h, w):
                raise ValueError(f"mask grid {tuple(mask.shape[-2:])} != patch grid {(h, w)}")
            x = torch.where(mask.flatten(1).unsqueeze(-1), self.mask_token.to(x.dtype), x)
        from timm.layers import resample_abs_pos_embed

        pos = resample_abs_pos_embed(self.vit.pos_embed, new_size=[h, w], old_size=list(self.grid),
                                     num_prefix_tokens=1)
        x = torch.cat([self.vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        return self.vit.norm_pre(self.vit.patch_drop(self.vit.pos_drop(x)))

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attn: bool = False) -> ViTOutput:
        """Encode images.

        Args:
            x: (B, C, H, W) images; H and W multiples of the patch size.
            mask: optional (B, H/p, W/p) bool, True = patch replaced by the mask token.
            return_attn: also return the last block's [CLS]->patch attention.

        Returns:
            ViTOutput with cls (B, D), patch (B, N, D) and attn (B, N) or None.
        """
        t = self._tokens(x, mask)
        blocks = list(self.vit.blocks)
        for blk in blocks[:-1]:
            t = blk(t)
        attn = cls_attention(blocks[-1], t) if return_attn else None
        t = self.vit.norm(blocks[-1](t))
        return ViTOutput(cls=t[:, 0], patch=t[:, 1:], attn=attn)


def cls_attention(block: nn.Module, tokens: Tensor) -> Tensor:
    """[CLS]->patch attention of a timm ViT block, averaged over heads and renormalised.

    Args:
        block: a timm `Block` whose `attn` has `qkv`, `num_heads`, `head_dim`, `scale`,
            `q_norm` and `k_norm`.
        tokens: (B, 1 + N, D) input of that block ([CLS] first).

    Returns:
        (B, N) non-negative weights summing to 1 over the N patch tokens.
    """
    a = block.attn
    b, n, _ = tokens.shape
    qkv = a.qkv(block.norm1(tokens)).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k = a.q_norm(qkv[0][:, :, :1]), a.k_norm(qkv[1])          # (B, H, 1, hd), (B, H, T, hd)
    weights = F.softmax((q.float() * a.scale) @ k.float().transpose(-2, -1), dim=-1)
    weights = weights[:, :, 0, 1:].mean(dim=1)                   # (B, N)
    return weights / weights.sum(dim=-1, keepdim=True)
