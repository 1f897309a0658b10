"""CIFAR-10 and CIFAR-100 from the python pickles, via torchvision.

Validation is the 10,000-image test set, as in the papers Table 4.1 compares against.

Why the subclasses below: torchvision checks the md5 of every pickle each time a dataset is
built. That takes half a second on the real files, and it refuses the tiny copies, in the real
on-disk format, that our tests write. The subclasses set the per-file md5s to ``None``, which
makes torchvision's own ``check_integrity`` test that each file exists. Downloads stay verified:
``download()`` still checks the archive's md5 (``tgz_md5``) before extracting it. Set
``verify_md5=True`` to use torchvision's classes unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from lightning_asyncsam.app.data.base import ClassificationDataModule, DatasetNotFoundError, check_choice
from lightning_asyncsam.app.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_flip,
)


def _without_file_md5(cls: type[CIFAR10]) -> type[CIFAR10]:
    """Return a subclass of ``cls`` that checks its pickles for existence, not md5."""
    return type(
        cls.__name__ + "Unchecked",
        (cls,),
        {
            "__doc__": f"{cls.__name__} that checks files exist instead of their md5 (see module doc).",
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


CIFAR10Unchecked = _without_file_md5(CIFAR10)
CIFAR100Unchecked = _without_file_md5(CIFAR100)

_VARIANTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "checked": CIFAR10,
        "unchecked": CIFAR10Unchecked,
        "num_classes": 10,
        "stats": (CIFAR10_MEAN, CIFAR10_STD),
        "files": "data_batch_1 ... data_batch_5, test_batch, batches.meta",
    },
    "cifar100": {
        "checked": CIFAR100,
        "unchecked": CIFAR100Unchecked,
        "num_classes": 100,
        "stats": (CIFAR100_MEAN, CIFAR100_STD),
        "files": "train, test, meta",
    },
}


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10 or CIFAR-100 with pad-4 random crop and flip for training.

    Args:
        variant: ``"cifar10"`` or ``"cifar100"``.
        root: Folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``.
        num_classes: Must match the variant (10 or 100).
        batch_size: Training batch size ``b``.
        image_size: Side the model sees: 32, or 224 to fine-tune ImageNet-pretrained ViT-B/16.
        normalize: ``"cifar"`` (the dataset's own statistics) or ``"imagenet"`` (what pretrained
            weights expect).
        verify_md5: Check every file's md5 with torchvision's own classes.
        **kwargs: ``num_workers``, ``pin_memory``, ``download``, ``drop_last`` of
            :class:`~lightning_asyncsam.app.data.base.ClassificationDataModule`.
    """

    def __init__(
        self,
        variant: str = "cifar10",
        root: str | Path = "./data",
        num_classes: int = 10,
        batch_size: int = 128,
        image_size: int = 32,
        normalize: str = "cifar",
        verify_md5: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, batch_size=batch_size, **kwargs)
        check_choice("variant", variant, tuple(_VARIANTS))
        check_choice("normalize", normalize, ("cifar", "imagenet"))
        expected = _VARIANTS[variant]["num_classes"]
        if num_classes != expected:
            raise ValueError(f"num_classes must be {expected} for {variant}, got {num_classes!r}.")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}.")
        self.variant = variant
        self.image_size = image_size
        self.normalize = normalize
        self.verify_md5 = verify_md5
        self._dataset_cls: type[CIFAR10] = _VARIANTS[variant]["checked" if verify_md5 else "unchecked"]

    def download_data(self) -> None:
        """Download and extract the python pickles with torchvision (archive md5 checked)."""
        for train in (True, False):
            self._dataset_cls(str(self.root), train=train, download=True)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """The 50,000 training and 10,000 test images."""
        folder = self.root / self._dataset_cls.base_folder
        try:
            return self._split(train=True), self._split(train=False)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFoundError(
                self.variant.upper().replace("CIFAR", "CIFAR-"),
                folder,
                layout=f"{folder}/  with the python pickles: {_VARIANTS[self.variant]['files']}",
                how_to_get=(
                    f"set data.download=true (fetches {self._dataset_cls.url}), or download and "
                    f"extract that archive into {self.root}."
                ),
            ) from err

    def _split(self, train: bool) -> Dataset:
        mean, std = _VARIANTS[self.variant]["stats"] if self.normalize == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)
        transform = crop_flip(32, mean, std, train=train, resize_to=self.image_size)
        return self._dataset_cls(str(self.root), train=train, transform=transform, download=False)
