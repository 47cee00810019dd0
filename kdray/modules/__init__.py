"""Building blocks shared by several methods or by the data pipeline (plain PyTorch and timm).

Importing the package registers the built-in backbones (kdray.modules.backbones.BACKBONES).
Code that only one method uses lives in that method's package (kdray/methods/<name>/).
"""

from kdray.modules import backbones, cifar_resnet, cifar_zoo, vit  # noqa: F401 - registration
