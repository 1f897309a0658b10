"""torchvision's ImageNet ResNets (ResNet-50 for Tiny-ImageNet), trained from scratch.

ImageNet's stem (7x7 stride-2 conv, then 3x3 stride-2 max-pool) shrinks a 224x224 image 4x
before the first stage. On Tiny-ImageNet's 64x64 images it would leave 16x16 maps for stage 1
and 2x2 for the last. The paper does not say what it did; ``stem="small"`` replaces the stem
with a 3x3 stride-1 conv and no pool (the usual CIFAR adaptation), so the stages see 64, 32, 16
and 8 pixels. That costs about as much compute per image as 224x224 ImageNet with the original
stem; ``stem="imagenet"`` keeps torchvision's stem for 16x less.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import ResNet, resnet18, resnet34, resnet50, resnet101

_ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}


def imagenet_resnet(arch: str = "resnet50", num_classes: int = 200, stem: str = "small") -> ResNet:
    """Build a randomly initialised torchvision ResNet.

    Args:
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        num_classes: Number of output logits.
        stem: ``"small"`` (3x3 stride-1 conv, no max-pool; for 64x64 inputs) or ``"imagenet"``.

    Returns:
        The network.

    Example::

        net = imagenet_resnet("resnet50", num_classes=200)
        net(torch.randn(2, 3, 64, 64)).shape   # torch.Size([2, 200])
    """
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}.")
    if stem not in ("small", "imagenet"):
        raise ValueError(f"stem must be 'small' or 'imagenet', got {stem!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    net = _ARCHS[arch](weights=None, num_classes=num_classes)
    if stem == "small":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()  # type: ignore[assignment]
    return net
