"""Dense (per-position) logits from a CNN classifier: the CSKD teacher.

A CNN classifier that ends in global average pooling and one linear layer gives the same global
logits whether the linear layer is applied before or after the pooling. Applying it at every
position of the last feature map therefore yields dense logits P_T (B, C, h, w) whose spatial mean
is exactly the usual output (CSKD, docs/methods/cskd.md §4.1). `DenseTeacher` does this for

- kdray `Classifier`s (a kdray ConvNet, or a timm CNN built with `num_classes=0`, plus `head`),
- plain timm CNNs whose `get_classifier()` is an `nn.Linear` (regnety_160, resnets, ...).

Whether a given network really has a linear head after average pooling is verified numerically
(`check_dense_consistent`) rather than assumed: heads with a norm or MLP after the pooling fail.

Also registers `conv3`: the 3-block kdray ConvNet (stride 8), whose 4x4 map at 32 px matches the
8x8 patch grid of a patch-4 ViT the way RegNetY's 7x7 matches DeiT's 14x14 (a 2x2 pooling).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdray.modules.backbones import Classifier, ConvNet, register_backbone

register_backbone("conv3")(lambda **kw: ConvNet(64, 3))


def _feature_map(backbone: nn.Module, x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, D, h, w) last feature map before the global pooling."""
    if isinstance(backbone, ConvNet):
        f = backbone.blocks(x)
    elif hasattr(backbone, "forward_features"):
        f = backbone.forward_features(x)
    else:
        raise ValueError(f"{type(backbone).__name__} has no spatial feature map (needs a kdray "
                         "ConvNet or a timm model with forward_features)")
    if f.ndim != 4:
        raise ValueError(f"{type(backbone).__name__}.forward_features gave shape "
                         f"{tuple(f.shape)}; a dense teacher needs a CNN map (B, D, h, w)")
    return f


class DenseTeacher(nn.Module):
    """Wraps a CNN classifier `net`; `forward` gives dense logits (B, C, h, w).

    Args:
        net: a kdray `Classifier` or a timm CNN with a linear classifier. Its parameters are kept
            as they are (freezing is the caller's choice).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        fc = net.head if isinstance(net, Classifier) else net.get_classifier()
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"{type(net).__name__}: the classifier is {type(fc).__name__}, not "
                             "nn.Linear, so it cannot be applied per position")

    def _parts(self) -> tuple[nn.Module, nn.Linear]:
        if isinstance(self.net, Classifier):
            return self.net.backbone, self.net.head
        return self.net, self.net.get_classifier()

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, C, h, w) dense logits."""
        backbone, fc = self._parts()
        f = _feature_map(backbone, x)
        return fc(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def global_logits(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C): the network's own (pooled) output, for checks."""
        out = self.net(x)
        return out.logits if isinstance(self.net, Classifier) else out


@torch.no_grad()
def check_dense_consistent(teacher: DenseTeacher, image_size: int, *, atol: float = 1e-3
                           ) -> tuple[int, int]:
    """Verify on random input that the dense logits average to the global logits.

    Args:
        teacher: the wrapped network (put in eval mode here and left so).
        image_size: side of the square test input.
        atol: tolerance relative to the logits' scale.

    Returns:
        The dense grid (h, w).

    Raises:
        ValueError: when the two differ (the head is not linear after average pooling).
    """
    teacher.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, image_size, image_size, generator=g)
    try:
        dense = teacher(x)
        ref = teacher.global_logits(x)
    except RuntimeError as e:  # e.g. a channels-last feature map meeting the linear layer
        raise ValueError(f"{type(teacher.net).__name__} cannot give dense logits: {e}") from None
    err = (dense.mean(dim=(2, 3)) - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    if err > atol * scale:
        raise ValueError(f"dense logits of {type(teacher.net).__name__} do not average to its "
                         f"logits (max error {err:.3g}): its head is not a linear layer after "
                         "global average pooling")
    return int(dense.shape[2]), int(dense.shape[3])
