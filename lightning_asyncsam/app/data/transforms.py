"""Image transforms shared by the image datamodules, with the reason for each choice.

The paper (TensorFlow 2.11) does not state its augmentation. We use the standard ones of the
papers it cites: pad-4 random crop and horizontal flip for 32x32 and 64x64 images (He et al. 2016,
Zagoruyko & Komodakis 2016), random-resized crop and flip for Flowers102's photos of varying size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision import transforms as T

#: Per-channel statistics of the CIFAR-10 training images (the usual published values).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: Per-channel statistics of the CIFAR-100 training images.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
#: ImageNet statistics: what ImageNet-pretrained weights (ViT-B/16) were trained with, and a
#: reasonable default for other photographs (Flowers102, Tiny-ImageNet).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[..., object]


def crop_flip(
    size: int, mean: Sequence[float], std: Sequence[float], train: bool, resize_to: int | None = None
) -> Transform:
    """Pad-4 random crop and flip (train) or nothing (validation), then normalise.

    Args:
        size: Side of the stored images (32 for CIFAR, 64 for Tiny-ImageNet).
        mean: Per-channel mean to subtract.
        std: Per-channel std to divide by.
        train: Whether to augment.
        resize_to: Resize to this side after augmenting (224 for ViT-B/16 fine-tuning, which
            needs its pretraining resolution); ``None`` keeps ``size``.

    Returns:
        A transform from a PIL image to a normalised ``[3, H, W]`` float tensor.
    """
    steps: list[Transform] = []
    if train:
        steps += [T.RandomCrop(size, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()]
    if resize_to is not None and resize_to != size:
        steps.append(T.Resize(resize_to, antialias=True))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def resized_crop_flip(size: int, mean: Sequence[float], std: Sequence[float], train: bool) -> Transform:
    """Random-resized crop and flip (train) or resize and centre crop (validation), then normalise.

    For datasets of photographs of varying size such as Flowers102.

    Args:
        size: Side of the square the model sees.
        mean: Per-channel mean to subtract.
        std: Per-channel std to divide by.
        train: Whether to augment.

    Returns:
        A transform from a PIL image to a normalised ``[3, size, size]`` float tensor.
    """
    if train:
        steps: list[Transform] = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
    else:
        # Resize the short side to size * 8/7 (256 for 224, the ImageNet convention), then crop.
        steps = [T.Resize(round(size * 8 / 7), antialias=True), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
