"""Mixup / CutMix with label smoothing, following timm's `Mixup` in batch mode (the DeiT recipe).

Parameters are drawn once per batch in the data collate (`draw_mix`) from an explicit
`numpy.random.RandomState`, with the same calls in the same order as timm's `Mixup`, so a
RandomState seeded like numpy's global generator reproduces timm exactly. The method applies
them on device (`mix_images`, `mix_targets`) and so decides who sees the mixed images (CSKD's
teacher does). As in timm, every image is mixed with its mirror in the batch (`x.flip(0)`).

A draw is a plain dict: ``{"lam": float, "box": (y0, y1, x0, x1) | None}``; ``lam == 1`` means
this batch is not mixed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Mix = dict


def cutmix_box(rng: np.random.RandomState, height: int, width: int, lam: float
               ) -> tuple[tuple[int, int, int, int], float]:
    """A CutMix box of area ~(1 - lam) * H * W (clipped at the border) and the corrected lam
    (1 - box area / image area), as timm's `cutmix_bbox_and_lam` with `correct_lam=True`."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = rng.randint(0, height)
    cx = rng.randint(0, width)
    y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + (cut_h + 1) // 2, 0, height)
    x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + (cut_w + 1) // 2, 0, width)
    box = (int(y0), int(y1), int(x0), int(x1))
    return box, 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / float(height * width)


def draw_mix(rng: np.random.RandomState, height: int, width: int, *, mixup_alpha: float,
             cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5) -> Mix:
    """One batch's mixing parameters (timm `Mixup._params_per_batch` + the CutMix box).

    Args:
        rng: the batch's random state (seeded from the batch's sample seeds in collate).
        height, width: image size.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that kind off (not both).
        prob: chance that a batch is mixed at all.
        switch_prob: chance of CutMix rather than mixup when both are on.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("draw_mix needs mixup_alpha > 0 or cutmix_alpha > 0")
    if not rng.rand() < prob:
        return {"lam": 1.0, "box": None}
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(rng.rand() < switch_prob)
        lam = rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha,
                                                                               mixup_alpha)
    elif mixup_alpha > 0:
        use_cutmix, lam = False, rng.beta(mixup_alpha, mixup_alpha)
    else:
        use_cutmix, lam = True, rng.beta(cutmix_alpha, cutmix_alpha)
    lam = float(lam)
    if lam == 1.0 or not use_cutmix:
        return {"lam": lam, "box": None}
    box, lam = cutmix_box(rng, height, width, lam)
    return {"lam": lam, "box": box}


def mix_images(x: Tensor, mix: Mix | None) -> Tensor:
    """Mixed copy of a batch: (B, C, H, W) -> (B, C, H, W); `x` itself is left untouched."""
    if mix is None or mix["lam"] == 1.0:
        return x
    other = x.flip(0)
    if mix["box"] is None:
        return x * mix["lam"] + other * (1.0 - mix["lam"])
    y0, y1, x0, x1 = mix["box"]
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
    return out


def mix_targets(labels: Tensor, mix: Mix | None, num_classes: int, smoothing: float = 0.0
                ) -> Tensor:
    """Soft targets (B, num_classes): label-smoothed one-hot (off = smoothing / C, on = 1 -
    smoothing + off) mixed with the flipped batch's by lam (timm `mixup_target`)."""
    off = smoothing / num_classes
    y = F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off
    lam = 1.0 if mix is None else mix["lam"]
    if lam == 1.0:
        return y
    return y * lam + y.flip(0) * (1.0 - lam)


def soft_target_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """timm's SoftTargetCrossEntropy: mean over the batch of -sum_c t_c log softmax(s)_c."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


# ---------------------------------------------------------------------------- pair mixing (M2SD)
# M2SD (docs/methods/m2sd.md §5.2) mixes each image with a partner of a *different* class, feeds the same
# (i, j, lam) to a mixup and a CutMix branch, and keeps the CutMix box fully inside the image.
def different_class_partner(labels: Tensor, scores: Tensor) -> Tensor:
    """(B,) partner index j(i) with labels[j] != labels[i], uniform among such rows.

    Args:
        labels: (B,) class ids.
        scores: (B, B) i.i.d. uniform draws (from the caller's explicit generator); the partner
            is the highest-scoring row of another class. A row whose batch holds no other class
            is paired with itself (its mixed image is the image itself).
    """
    other = labels[:, None] != labels[None, :]
    masked = torch.where(other, scores, torch.full_like(scores, -1.0))
    j = masked.argmax(dim=1)
    return torch.where(other.any(dim=1), j, torch.arange(len(labels), device=labels.device))


def inside_cutmix_box(rng: np.random.RandomState, height: int, width: int, lam: float
                      ) -> tuple[tuple[int, int, int, int], float]:
    """A box of side ~(H√(1-lam), W√(1-lam)) placed uniformly *inside* the image, and lam
    recomputed from its integer area (1 - box area / image area).

    Returns:
        ((y0, y1, x0, x1), lam) with 0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W.
    """
    ratio = np.sqrt(max(0.0, 1.0 - lam))
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    y0 = int(rng.randint(0, height - cut_h + 1))  # centre ~ U(r_h/2, H - r_h/2), on the grid
    x0 = int(rng.randint(0, width - cut_w + 1))
    box = (y0, y0 + cut_h, x0, x0 + cut_w)
    return box, 1.0 - cut_h * cut_w / float(height * width)


def pair_mixup(x: Tensor, partner: Tensor, lam: float) -> Tensor:
    """lam * x + (1 - lam) * x[partner]: (B, C, H, W)."""
    return lam * x + (1.0 - lam) * x[partner]


def pair_cutmix(x: Tensor, partner: Tensor, box: tuple[int, int, int, int]) -> Tensor:
    """x with the box (y0, y1, x0, x1) taken from x[partner]: (B, C, H, W)."""
    y0, y1, x0, x1 = box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[partner][:, :, y0:y1, x0:x1]
    return out


def pair_targets(labels: Tensor, partner: Tensor, lam: float, num_classes: int) -> Tensor:
    """Soft labels lam * onehot(y_i) + (1 - lam) * onehot(y_j): (B, num_classes)."""
    y = F.one_hot(labels, num_classes).float()
    return lam * y + (1.0 - lam) * y[partner]
