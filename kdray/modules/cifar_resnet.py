"""ResNets with per-stage feature maps: the CIFAR zoo (He et al. 2016, §4.2) and ImageNet ResNet-18.

CIFAR ResNet-n (n = 6k + 2) has a 3x3 stem and three stages of k basic blocks at 32x32, 16x16 and
8x8; widths 16/32/64 (the FSCIL ResNet-20 of TOPIC/CEC, 64-d feature) or, for the `x4` variants of
the CRD/SSKD distillation zoo, 32/64/128/256 with the stem wider than the first stage.
`resnet18` is the torchvision ImageNet layout (7x7 stem + max-pool, 4 stages, 512-d feature).

Every backbone returns pooled (B, D) features from `forward`, exposes `num_features`, the tuple
`stage_channels` and `forward_stages(x) -> list[Tensor]` (one map per stage, highest resolution
first), which is what stage-wise distillation (attention transfer, M2SD's FE module) needs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdray.modules.backbones import register_backbone


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a residual; a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _Staged(nn.Module):
    """A stem followed by `stages`; pooled features are the mean of the last stage's map."""

    stem: nn.Module
    stages: nn.ModuleList

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Per-stage maps (B, c_i, H_i, W_i) of (B, C, H, W) images, in stage order."""
        out, feats = self.stem(x), []
        for stage in self.stages:
            out = stage(out)
            feats.append(out)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_features) pooled features."""
        return self.forward_stages(x)[-1].mean(dim=(2, 3))


class CifarResNet(_Staged):
    """CIFAR ResNet-`depth` with three stages (strides 1, 2, 2) and global average pooling.

    Args:
        depth: 6k + 2 (8, 14, 20, 32, 44, 56, 110); k basic blocks per stage.
        widths: stem width followed by the three stage widths.
        in_chans: input channels.
    """

    def __init__(self, depth: int = 20, widths: tuple[int, int, int, int] = (16, 16, 32, 64),
                 in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6k + 2 with k >= 1, got {depth}")
        blocks = (depth - 2) // 6
        stem, *stage_w = widths
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        chans = [stem, *stage_w]
        self.stages = nn.ModuleList(
            _stage(a, b, blocks, 1 if i == 0 else 2)
            for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
        self.stage_channels: tuple[int, ...] = tuple(stage_w)
        self.num_features = stage_w[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet18(_Staged):
    """torchvision ResNet-18 without its fc layer, exposing the four stage maps.

    Args:
        pretrained: load torchvision's ImageNet-1k weights (needs them in the torch hub cache or
            network access; CUB-200 FSCIL starts from them, CIFAR and mini-ImageNet do not).
    """

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        from torchvision.models import ResNet18_Weights, resnet18

        net = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.stage_channels: tuple[int, ...] = (64, 128, 256, 512)
        self.num_features = 512


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)   # CRD's resnet8x4 / resnet32x4: stem 32, stages 64/128/256


def _register_cifar(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    register_backbone(name)(lambda **kw: CifarResNet(depth, widths))


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar(f"resnet{_depth}", _depth, _NARROW)
_register_cifar("resnet8x4", 8, _WIDE)
_register_cifar("resnet32x4", 32, _WIDE)
register_backbone("resnet18")(lambda pretrained=False, **kw: ResNet18(pretrained=pretrained))
