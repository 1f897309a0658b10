"""Wide residual networks (Zagoruyko & Komodakis 2016): WRN-28-10 and WRN-16-8 of Table 4.1.

WRN-``depth``-``k``: a 3x3 stem of 16 channels, then three stages of ``n = (depth - 4) / 6``
pre-activation blocks (BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3) of width 16k, 32k and 64k,
strides 1, 2, 2; shortcuts that change shape are 1x1 convs. The paper names only the depth
("Wide-ResNet-28", "Wide-ResNet-16"); the widths 10 and 8 are those of the WRN paper's
CIFAR-100 and its most-used 16-layer network, and dropout defaults to 0 as in its main results.
Global average pooling makes the network work at any input size (Flowers102 at 64x64).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _WideBlock(nn.Module):
    """Pre-activation basic block with dropout between the two convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        # With a projection shortcut, it takes the pre-activated input, as in the WRN reference code.
        skip = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``.

    Args:
        depth: ``6n + 4``: 10, 16, 22, 28, 40 ...
        widen_factor: Width multiplier ``k`` (stage widths 16k, 32k, 64k).
        num_classes: Number of output logits.
        dropout: Dropout probability inside each block.
        in_channels: Channels of the input images.

    Example::

        net = WideResNet(depth=16, widen_factor=8, num_classes=102)
        net(torch.randn(2, 3, 64, 64)).shape   # torch.Size([2, 102])
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 100,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth!r}.")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"widen_factor must be an integer >= 1, got {widen_factor!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}.")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(_WideBlock(channels, width, stride=2 if stage > 0 and i == 0 else 1, dropout=dropout))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
