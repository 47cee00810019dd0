"""Light CIFAR students of the CRD/SSKD zoo: MobileNetV2 (width 0.5), ShuffleNetV1 (g = 3) and
ShuffleNetV2 (1x), adapted to 32-px inputs (no stride in the stem, three down-samplings).

Each maps (B, 3, H, W) images to (B, num_features) pooled features; `Classifier` adds the head.
Registered names: ``mobilenetv2``, ``shufflenetv1``, ``shufflenetv2``. Parameter counts with a
100-class head are listed in ``tests/test_sskd.py`` (about 0.81M, 0.95M and 1.36M, as in the
CRD table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdray.modules.backbones import register_backbone


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True
         ) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU)."""
    layers = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(B, g*c, H, W) -> (B, c*g, H, W): interleave the channels of the g groups."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


# ---------------------------------------------------------------------------- MobileNetV2
class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_cbr(cin, mid), _cbr(mid, mid, 3, stride, groups=mid),
                                  _cbr(mid, cout, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 32 px: stem and the 24-channel stage keep stride 1."""

    # (expansion, channels, blocks, stride); expansion None = the configurable T
    SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
                (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))

    def __init__(self, width: float = 0.5, expansion: int = 6, last: int = 1280) -> None:
        super().__init__()
        cin = int(32 * width)
        layers: list[nn.Module] = [_cbr(3, cin, 3)]
        for t, c, n, s in self.SETTINGS:
            cout = int(c * width)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t or expansion))
                cin = cout
        layers.append(_cbr(cin, last))
        self.features = nn.Sequential(*layers)
        self.num_features = last

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------- ShuffleNetV1
class _ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        first_groups = 1 if cin == 24 else groups  # the stem has too few channels to group
        self.groups = first_groups
        self.reduce = _cbr(cin, mid, groups=first_groups)
        self.dw = _cbr(mid, mid, 3, stride, groups=mid, relu=False)
        self.expand = _cbr(mid, cout, groups=groups, relu=False)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(self.dw(channel_shuffle(self.reduce(x), self.groups)))
        if self.stride == 2:  # down-sampling unit: concatenate an average-pooled shortcut
            return F.relu(torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], dim=1))
        return F.relu(y + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet (Zhang et al. 2018), g = 3, 1x width, stages of 4/8/4 units, 1x1 stem."""

    def __init__(self, widths: tuple[int, ...] = (240, 480, 960),
                 blocks: tuple[int, ...] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        cin = 24
        layers: list[nn.Module] = [_cbr(3, cin)]
        for cout, n in zip(widths, blocks):
            for i in range(n):
                # the first unit of a stage concatenates its input, so it only adds cout - cin
                layers.append(_ShuffleV1Unit(cin, cout - cin if i == 0 else cout,
                                             2 if i == 0 else 1, groups))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------- ShuffleNetV2
class _ShuffleV2Unit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_cbr(half, half), _cbr(half, half, 3, groups=half, relu=False),
                                    _cbr(half, half))

    def forward(self, x: Tensor) -> Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1), 2)


class _ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(_cbr(cin, cin, 3, 2, groups=cin, relu=False), _cbr(cin, mid))
        self.right = nn.Sequential(_cbr(cin, mid), _cbr(mid, mid, 3, 2, groups=mid, relu=False),
                                   _cbr(mid, mid))

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 1x (Ma et al. 2018): 3x3 stem at stride 1, stages 116/232/464, 1024 conv."""

    def __init__(self, widths: tuple[int, ...] = (116, 232, 464), blocks: tuple[int, ...] = (3, 7, 3),
                 last: int = 1024) -> None:
        super().__init__()
        cin = 24
        layers: list[nn.Module] = [_cbr(3, cin, 3)]
        for cout, n in zip(widths, blocks):
            layers.append(_ShuffleV2Down(cin, cout))
            layers += [_ShuffleV2Unit(cout) for _ in range(n)]
            cin = cout
        layers.append(_cbr(cin, last))
        self.features = nn.Sequential(*layers)
        self.num_features = last

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


register_backbone("mobilenetv2")(lambda **kw: MobileNetV2())
register_backbone("shufflenetv1")(lambda **kw: ShuffleNetV1())
register_backbone("shufflenetv2")(lambda **kw: ShuffleNetV2())
