"""Multi-crop backbone + head: one module call per step, crops grouped by resolution inside.

This is DINO's MultiCropWrapper idea for a masked ViT with a shared iBOT head: consecutive views
of equal size are concatenated and encoded together, then [CLS] tokens of every view and the patch
tokens of the first group (the global crops) go through the head in a single call. Being one
`forward`, it is the single DDP entry point of the student (and, deep-copied, the teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdray.modules.vit import MaskedViT


def resolution_groups(views: Sequence[Tensor]) -> list[range]:
    """Index ranges of consecutive views sharing the same (H, W), in order."""
    groups: list[range] = []
    start = 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[-2:] != views[start].shape[-2:]:
            groups.append(range(start, i))
            start = i
    return groups


@dataclass
class MultiCropOutput:
    """Outputs for V views of B images each; G = number of views in the first (global) group.

    Attributes:
        cls: (V * B, K) head logits of the [CLS] tokens, view-major (view 0 images first).
        patch: (G * B, N, K) head logits of the global views' patch tokens, or None when the model
            was built without patch outputs.
        feat: (G * B, N, D) backbone patch tokens of the global views (before the head).
        attn: (G * B, N) last-block [CLS]->patch attention of the global views, or None.
    """

    cls: Tensor
    patch: Tensor | None
    feat: Tensor
    attn: Tensor | None


class MultiCropModel(nn.Module):
    """Masked ViT + shared head over a list of views.

    Args:
        backbone: the encoder.
        head: maps (..., D) tokens to (..., K) logits; shared by [CLS] and patch tokens.
        patch_outputs: also run the head on the global views' patch tokens (needed by the MIM
            and patch-matching terms; off when both are ablated).
    """

    def __init__(self, backbone: MaskedViT, head: nn.Module, *, patch_outputs: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.patch_outputs = patch_outputs

    def forward(self, views: list[Tensor], masks: list[Tensor] | None = None,
                return_attn: bool = False) -> MultiCropOutput:
        """Encode every view.

        Args:
            views: V tensors (B, 3, H_v, W_v); the first group of equal size are the global crops.
            masks: None, or one (B, H/p, W/p) bool mask per global view (the first group).
            return_attn: also return the global views' last-block [CLS]->patch attention.
        """
        groups = resolution_groups(views)
        if masks is not None and len(masks) != len(groups[0]):
            raise ValueError(f"{len(masks)} masks for {len(groups[0])} global views")
        cls_parts = []
        for gi, g in enumerate(groups):
            x = torch.cat([views[i] for i in g])
            m = torch.cat(list(masks)) if gi == 0 and masks is not None else None
            out = self.backbone(x, m, return_attn=return_attn and gi == 0)
            cls_parts.append(out.cls)
            if gi == 0:
                feat, attn = out.patch, out.attn
        n_cls = sum(p.shape[0] for p in cls_parts)
        if not self.patch_outputs:
            return MultiCropOutput(self.head(torch.cat(cls_parts)), None, feat, attn)
        tokens = torch.cat(cls_parts + [feat.flatten(0, 1)])   # one head call for all tokens
        logits = self.head(tokens)
        patch = logits[n_cls:].unflatten(0, feat.shape[:2])
        return MultiCropOutput(logits[:n_cls], patch, feat, attn)
