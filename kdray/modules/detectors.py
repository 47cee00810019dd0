"""torchvision detectors (RetinaNet, Faster R-CNN) with their FPN features exposed, unedited.

The training path of ``torchvision.models.detection`` is reproduced from the models' own public
submodules so that a method can run the backbone (+ FPN) itself (e.g. on a masked input) and
reuse the features for the task loss: ``feats = model.backbone(images.tensors)``, then
`task_losses` (RetinaNet: head + anchor generator + ``compute_loss``; Faster R-CNN: RPN + RoI
heads) or `detect` (inference + ``postprocess_detections``). Resizing happens in the data
pipeline (kdray.data.coco), so `image_list` only normalises and zeroes the padding, as
``GeneralizedRCNNTransform`` would; boxes stay in the input's pixel coordinates.

Labels are contiguous 0..K-1 everywhere; Faster R-CNN's background class 0 is handled here.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:   # torchvision is imported where a detector is built or run (import cost)
    from torchvision.models import resnet
    from torchvision.models.detection.image_list import ImageList

log = logging.getLogger(__name__)

FAMILIES = ("retinanet", "faster_rcnn")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: strides of the distilled FPN levels: RetinaNet P3-P7, Faster R-CNN P2-P5 ("pool" is not).
STRIDES = {"retinanet": (8, 16, 32, 64, 128), "faster_rcnn": (4, 8, 16, 32)}
IMAGE_MEAN, IMAGE_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _resnet(arch: str, pretrained: bool) -> resnet.ResNet:
    from torchvision.models import resnet

    weights = None
    if pretrained:
        try:
            weights = resnet.__dict__[f"ResNet{arch[6:]}_Weights"].DEFAULT
            return resnet.__dict__[arch](weights=weights, norm_layer=nn.BatchNorm2d)
        except Exception as e:  # offline / no cache: fall back to random init, loudly
            log.warning("pretrained %s weights unavailable (%s: %s); random init", arch,
                        type(e).__name__, e)
    return resnet.__dict__[arch](weights=None, norm_layer=nn.BatchNorm2d)


def build_detector(family: str, arch: str, num_classes: int, *, fpn_channels: int = 256,
                   pretrained: bool = False, image_size: int = 800) -> nn.Module:
    """A torchvision detector with random weights (ImageNet backbone if `pretrained` and cached).

    Args:
        family: "retinanet" (P3-P7, P6/P7 from P5) or "faster_rcnn" (P2-P5 + max-pool level).
        arch: ResNet backbone, one of `ARCHS` (plain trainable BatchNorm, all stages trainable).
        num_classes: foreground classes K.
        fpn_channels: FPN width (256 in torchvision/mmdetection).
        pretrained: load ImageNet backbone weights when available.
        image_size: data.image_size (the transform's sizes; it is bypassed in training).
    """
    if family not in FAMILIES or arch not in ARCHS:
        raise ValueError(f"detector family must be one of {FAMILIES} and arch one of {ARCHS}, "
                         f"got {family!r}, {arch!r}")
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = _resnet(arch, pretrained)
    layers = [2, 3, 4] if family == "retinanet" else [1, 2, 3, 4]
    stage2 = body.inplanes // 8  # C2 width; C_i doubles per stage
    in_list = [stage2 * 2 ** (i - 1) for i in layers]
    extra = LastLevelP6P7(fpn_channels, fpn_channels) if family == "retinanet" else None
    backbone = BackboneWithFPN(body, {f"layer{i}": str(k) for k, i in enumerate(layers)},
                               in_list, fpn_channels, extra_blocks=extra)
    sizes = {"min_size": image_size, "max_size": round(image_size * 1333 / 800),
             "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)}
    if family == "retinanet":
        return RetinaNet(backbone, num_classes, **sizes)
    return FasterRCNN(backbone, num_classes + 1, **sizes)


def _is_retinanet(model: nn.Module) -> bool:
    from torchvision.models.detection import RetinaNet

    return isinstance(model, RetinaNet)


def family_of(model: nn.Module) -> str:
    return "retinanet" if _is_retinanet(model) else "faster_rcnn"


def image_list(x: Tensor, sizes: list[tuple[int, int]] | None = None) -> ImageList:
    """Normalise a zero-padded (B, 3, H, W) batch in [0, 1]; padding stays 0 after it."""
    from torchvision.models.detection.image_list import ImageList

    mean = x.new_tensor(IMAGE_MEAN)[:, None, None]
    std = x.new_tensor(IMAGE_STD)[:, None, None]
    sizes = sizes or [(x.shape[-2], x.shape[-1])] * x.shape[0]
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    valid = torch.stack([(rows[:, None] < h) & (cols[None] < w) for h, w in sizes])[:, None]
    return ImageList((x - mean) / std * valid.to(x.dtype), [(int(h), int(w)) for h, w in sizes])


def levels(model: nn.Module, feats: OrderedDict[str, Tensor]) -> list[Tensor]:
    """The distilled FPN levels, finest first (Faster R-CNN's extra "pool" level left out)."""
    vals = list(feats.values())
    return vals if family_of(model) == "retinanet" else vals[: len(STRIDES["faster_rcnn"])]


def task_losses(model: nn.Module, images: ImageList, feats: OrderedDict[str, Tensor],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The detector's training losses from precomputed backbone features (model in train mode).

    Args:
        targets: per image {"boxes": (N, 4) xyxy, "labels": (N,) int64 in 0..K-1}.
    """
    if _is_retinanet(model):
        fl = list(feats.values())
        return model.compute_loss(targets, model.head(fl), model.anchor_generator(images, fl))
    targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    proposals, rpn = model.rpn(images, feats, targets)
    _, roi = model.roi_heads(feats, proposals, images.image_sizes, targets)
    return {**rpn, **roi}


def detect(model: nn.Module, images: ImageList, feats: OrderedDict[str, Tensor]) -> list[dict]:
    """Per image {"boxes" xyxy input pixels, "scores", "labels" 0..K-1} (model in eval mode)."""
    if _is_retinanet(model):
        fl = list(feats.values())
        head = model.head(fl)
        anchors = model.anchor_generator(images, fl)
        per_level = [f.shape[-2] * f.shape[-1] for f in fl]
        a = head["cls_logits"].shape[1] // sum(per_level)
        split = [n * a for n in per_level]
        outs = {k: list(v.split(split, dim=1)) for k, v in head.items()}
        return model.postprocess_detections(outs, [list(x.split(split)) for x in anchors],
                                            images.image_sizes)
    proposals, _ = model.rpn(images, feats)
    dets, _ = model.roi_heads(feats, proposals, images.image_sizes)
    return [{**d, "labels": d["labels"] - 1} for d in dets]
