"""Plain conv nets: the Speech Commands CNN on log-mel features and the small digits CNN.

The paper calls its Speech Commands model only "CNN". Ours is the common keyword-spotting shape:
a batch norm on the input features (log-mel values sit far from zero mean, unit variance), then
blocks of 3x3 conv, batch norm and ReLU, each halving the map with 2x2 max-pooling except the
last, then global average pooling, dropout and a linear classifier. With the default widths
(32, 64, 128, 256) on 40 x 101 log-mel inputs it has 0.40 M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class ConvNet(nn.Module):
    """Conv blocks, global average pooling, dropout, linear.

    Args:
        num_classes: Number of output logits.
        in_channels: Channels of the input (1 for log-mel features or grayscale digits).
        channels: Output channels of each conv block.
        dropout: Dropout before the classifier.
        input_norm: Start with a batch norm of the raw input.

    Example::

        net = ConvNet(num_classes=35)
        net(torch.randn(2, 1, 40, 101)).shape   # torch.Size([2, 35])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.2,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
        channels = list(channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of integers >= 1, got {channels!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)] if input_norm else []
        previous = in_channels
        for i, width in enumerate(channels):
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(channels) - 1:
                # ceil_mode keeps odd sides (101 frames, 8x8 digits after pooling) from losing a row.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            previous = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(self.dropout(out))


def speech_cnn(num_classes: int = 35, n_mels: int = 40, dropout: float = 0.2) -> ConvNet:
    """The Speech Commands CNN (widths 32-64-128-256) for ``[B, 1, n_mels, frames]`` log-mels.

    ``n_mels`` is not needed by the layers (pooling is global); it is taken so that the config
    states what the network expects.
    """
    if n_mels < 8:
        raise ValueError(f"n_mels must be >= 8 for three 2x2 poolings, got {n_mels!r}.")
    return ConvNet(num_classes=num_classes, in_channels=1, channels=(32, 64, 128, 256), dropout=dropout)


def digits_cnn(num_classes: int = 10) -> ConvNet:
    """The small CNN of the ``digits`` recipe: widths 16-32-64 on 8x8 grayscale, 24 k parameters."""
    # No input batch norm: the digits datamodule already standardises the pixels.
    return ConvNet(num_classes=num_classes, in_channels=1, channels=(16, 32, 64), dropout=0.0, input_norm=False)
