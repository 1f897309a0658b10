"""Oxford Flowers102 (Nilsback & Zisserman 2008) via torchvision.

Splits: the official ones (``setid.mat``): train 1,020, val 1,020, test 6,149 images. We train on
``train`` and score on ``test``, as we score CIFAR on its test set; both are configurable.

Why the subclass below: torchvision checks the md5 of ``imagelabels.mat`` and ``setid.mat``
every time, which refuses the tiny copies in the real format that our tests write. The subclass
checks that the files exist; ``download()`` still verifies every file it fetches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset
from torchvision.datasets import Flowers102

from lightning_asyncsam.app.data.base import (
    ClassificationDataModule,
    DatasetNotFoundError,
    check_choice,
    check_positive_int,
)
from lightning_asyncsam.app.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resized_crop_flip

_LAYOUT = """{folder}/
  jpg/image_00001.jpg ... image_08189.jpg
  imagelabels.mat   (labels 1..102 of every image)
  setid.mat         (trnid / valid / tstid image ids)"""


class Flowers102Unchecked(Flowers102):
    """Flowers102 that checks its label files exist instead of their md5 (see module doc)."""

    def _check_integrity(self) -> bool:
        return self._images_folder.is_dir() and all(
            (self._base_folder / self._file_dict[key][0]).is_file() for key in ("label", "setid")
        )


class Flowers102DataModule(ClassificationDataModule):
    """Flowers102 at ``image_size`` pixels with random-resized crop and flip for training.

    Args:
        root: Folder holding ``flowers-102/``.
        num_classes: Must be 102.
        batch_size: Training batch size ``b`` (40 in Table A.1).
        image_size: Side of the square crops the model sees.
        train_split: ``"train"`` (1,020 images) or ``"trainval"`` (2,040).
        val_split: ``"test"`` (6,149 images) or ``"val"`` (1,020).
        verify_md5: Use torchvision's class unchanged, which checks md5s.
        **kwargs: ``num_workers``, ``pin_memory``, ``download``, ``drop_last`` of
            :class:`~lightning_asyncsam.app.data.base.ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str | Path = "./data",
        num_classes: int = 102,
        batch_size: int = 40,
        image_size: int = 64,
        train_split: str = "train",
        val_split: str = "test",
        verify_md5: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, batch_size=batch_size, **kwargs)
        if num_classes != 102:
            raise ValueError(f"num_classes must be 102 for Flowers102, got {num_classes!r}.")
        check_positive_int("image_size", image_size)
        check_choice("train_split", train_split, ("train", "trainval"))
        check_choice("val_split", val_split, ("test", "val"))
        self.image_size = image_size
        self.train_split = train_split
        self.val_split = val_split
        self._dataset_cls: type[Flowers102] = Flowers102 if verify_md5 else Flowers102Unchecked

    def download_data(self) -> None:
        """Download the images and label files with torchvision (md5s checked)."""
        self._dataset_cls(str(self.root), split="train", download=True)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """The configured train and validation splits."""
        train_tf = resized_crop_flip(self.image_size, IMAGENET_MEAN, IMAGENET_STD, train=True)
        val_tf = resized_crop_flip(self.image_size, IMAGENET_MEAN, IMAGENET_STD, train=False)
        train_names = ["train", "val"] if self.train_split == "trainval" else ["train"]
        try:
            parts = [self._dataset_cls(str(self.root), split=name, transform=train_tf) for name in train_names]
            val = self._dataset_cls(str(self.root), split=self.val_split, transform=val_tf)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            folder = self.root / "flowers-102"
            raise DatasetNotFoundError(
                "Oxford Flowers102",
                folder,
                layout=_LAYOUT.format(folder=folder),
                how_to_get=(
                    "set data.download=true, or download 102flowers.tgz, imagelabels.mat and "
                    f"setid.mat from {Flowers102._download_url_prefix} and extract the archive "
                    f"into {folder}."
                ),
            ) from err
        train: Dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        return train, val
