"""CIFAR networks of the CRD/SSKD teacher-student zoo (docs/methods/sskd.md §3.1), written for 32-px inputs:
wide ResNets, VGG with batch norm and the bottleneck ResNet-50; the light students (MobileNetV2,
ShuffleNetV1/V2) live in `kdray.modules.cifar_mobile` and are registered by importing this module.
The CIFAR ResNets (resnet20/56, resnet8x4/32x4) are in `kdray.modules.cifar_resnet`.

Every network maps (B, 3, H, W) images to (B, num_features) globally average-pooled features;
`kdray.modules.backbones.Classifier` adds the linear head. Registered names: ``wrn_16_1``,
``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``, ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``,
``resnet50_cifar``, plus those of `cifar_mobile`. Parameter counts with a 100-class head are
checked in ``tests/test_sskd.py`` against the CRD table (wrn_40_2 2.26M, wrn_16_2 0.70M,
wrn_40_1 0.57M, vgg13 9.46M, vgg8 3.96M, ResNet-50 23.71M).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdray.modules import cifar_mobile  # noqa: F401 - registers the light students
from kdray.modules.backbones import register_backbone


def _conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


# ---------------------------------------------------------------------------- wide ResNet
class _WideBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv3x3 twice); a 1x1 projection when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # in-place ReLUs on fresh BN outputs: BN's backward needs its input, never its output,
        # and the block input x is left untouched (tests/test_modules.py checks equal gradients)
        o = F.relu(self.bn1(x), inplace=True)
        y = self.conv2(F.relu(self.bn2(self.conv1(o)), inplace=True))
        # the projection reads the activated input, as in Zagoruyko & Komodakis' code
        return y + (x if self.proj is None else self.proj(o))


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016): 3 groups of (depth - 4) / 6 blocks, widths
    16k / 32k / 64k, strides 1 / 2 / 2, final BN-ReLU and global average pooling."""

    def __init__(self, depth: int, widen: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wide ResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        layers: list[nn.Module] = [_conv3(3, 16)]
        cin = 16
        for g, cout in enumerate(widths):
            for i in range(n):
                layers.append(_WideBlock(cin, cout, 2 if (g > 0 and i == 0) else 1))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------- VGG
VGG_STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    """VGG with batch norm, CIFAR layout of the CRD zoo: five stages of 3x3 conv-BN-ReLU,
    max-pooling after the first three (32 -> 4 px; after the fourth too for inputs above 32 px),
    then global average pooling to 512 features."""

    def __init__(self, stages: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        cin, blocks = 3, []
        for widths in stages:
            layers: list[nn.Module] = []
            for cout in widths:
                layers += [_conv3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(blocks)
        self.num_features = cin

    def forward(self, x: Tensor) -> Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < 3 or (i == 3 and x.shape[-1] > 4):
                x = F.max_pool2d(x, 2)
        return x.mean(dim=(2, 3))


# ---------------------------------------------------------------------------- ResNet-50
class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            _conv3(planes, planes, stride), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + (x if self.proj is None else self.proj(x)))


class ResNet50CIFAR(nn.Module):
    """Bottleneck ResNet-50 (He et al. 2016) with a 3x3 stride-1 stem and no max-pool (32 px)."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv3(3, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        cin = 64
        for s, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for i in range(n):
                layers.append(_Bottleneck(cin, planes, 2 if (s > 0 and i == 0) else 1))
                cin = planes * _Bottleneck.expansion
        self.features = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


def _register() -> None:
    for depth, widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
        register_backbone(f"wrn_{depth}_{widen}")(
            lambda depth=depth, widen=widen, **kw: WideResNet(depth, widen))
    for name, stages in VGG_STAGES.items():
        register_backbone(name)(lambda stages=stages, **kw: VGG(stages))
    register_backbone("resnet50_cifar")(lambda **kw: ResNet50CIFAR())


_register()
