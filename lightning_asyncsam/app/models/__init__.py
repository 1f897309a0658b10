"""The networks of the paper's Table 4.1, one family per file, plus the digits CNN.

Each builder takes ``num_classes`` so that the Hydra configs can pass ``${data.num_classes}``.
"""

from lightning_asyncsam.app.models.conv_net import ConvNet, digits_cnn, speech_cnn
from lightning_asyncsam.app.models.resnet_cifar import CifarResNet, resnet20
from lightning_asyncsam.app.models.resnet_imagenet import imagenet_resnet
from lightning_asyncsam.app.models.vit import vision_transformer
from lightning_asyncsam.app.models.wide_resnet import WideResNet

__all__ = [
    "CifarResNet",
    "ConvNet",
    "WideResNet",
    "digits_cnn",
    "imagenet_resnet",
    "resnet20",
    "speech_cnn",
    "vision_transformer",
]
