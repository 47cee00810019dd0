"""Backbones by name: small kdray networks for 32-px smoke runs, or any timm model.

Every backbone maps (B, C, H, W) images to (B, D) features and exposes `num_features`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class ConvNet(nn.Module):
    """The classic 4-block few-shot ConvNet (Vinyals et al. 2016), global-average pooled."""

    def __init__(self, width: int = 64, depth: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        chans = [in_chans] + [width] * depth
        self.blocks = nn.Sequential(*[_conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.num_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).mean(dim=(2, 3))


class MLP(nn.Module):
    """Flatten + 2-layer MLP without normalisation: exact DDP-vs-single-process comparisons."""

    def __init__(self, in_features: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),
                                 nn.Linear(width, width), nn.ReLU())
        self.num_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "conv4": lambda **kw: ConvNet(64, 4),
    "conv4_wide": lambda **kw: ConvNet(128, 4),
    "conv2": lambda **kw: ConvNet(32, 2),
    "mlp": lambda image_size=32, **kw: MLP(3 * (image_size or 32) ** 2),
}


def register_backbone(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn
    return deco


def backbone_exists(name: str) -> bool:
    if name in BACKBONES:
        return True
    import timm

    return name in timm.list_models()


def build_backbone(name: str, *, pretrained: bool = False, drop_path: float = 0.0,
                   image_size: int | None = None) -> nn.Module:
    """A feature extractor by name (kdray registry first, then timm with `num_classes=0`)."""
    if name in BACKBONES:
        return BACKBONES[name](pretrained=pretrained, drop_path=drop_path, image_size=image_size)
    import timm

    if name not in timm.list_models():
        raise ValueError(f"unknown backbone {name!r}; kdray backbones: {sorted(BACKBONES)}, "
                         "or any name in timm.list_models()")
    kw = {"num_classes": 0, "pretrained": pretrained}
    if drop_path:
        kw["drop_path_rate"] = drop_path
    return timm.create_model(name, **kw)


@dataclass
class ClsOutput:
    logits: Tensor   # (B, num_classes)
    feat: Tensor     # (B, D) pooled features


class Classifier(nn.Module):
    """Backbone + linear head; `forward` returns both logits and features (one DDP entry point)."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: Tensor) -> ClsOutput:
        feat = self.backbone(x)
        return ClsOutput(self.head(feat), feat)

