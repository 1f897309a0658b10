"""Tiny-ImageNet (Le & Yang 2015): 200 classes of 64x64 images, read from the extracted tree.

torchvision has no Tiny-ImageNet class, and ``ImageFolder`` cannot read the validation split,
whose images sit in one folder with their labels in ``val_annotations.txt``. So this file reads
the tree itself: 100,000 training and 10,000 validation images, labels indexed in the order of
``wnids.txt``. The test split has no labels and is not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from lightning_asyncsam.app.data.base import ClassificationDataModule, DatasetNotFoundError
from lightning_asyncsam.app.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Transform, crop_flip

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_LAYOUT = """{folder}/
  wnids.txt                          (the 200 class ids, one per line)
  train/<wnid>/images/<wnid>_<n>.JPEG
  val/images/val_<n>.JPEG
  val/val_annotations.txt            (file name, wnid, box, tab separated)"""


class TinyImageNetSplit(Dataset):
    """One labelled split of the ``tiny-imagenet-200`` tree.

    Args:
        folder: The ``tiny-imagenet-200`` folder.
        split: ``"train"`` or ``"val"``.
        transform: Applied to each RGB PIL image.
    """

    def __init__(self, folder: Path, split: str, transform: Transform | None = None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
        self.folder = folder
        self.transform = transform
        self.wnids = [line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()]
        index = {wnid: i for i, wnid in enumerate(self.wnids)}
        self.samples = self._train_samples(index) if split == "train" else self._val_samples(index)
        if not self.samples:
            raise FileNotFoundError(f"no images found for split {split!r} under {folder}")

    def _train_samples(self, index: dict[str, int]) -> list[tuple[Path, int]]:
        return [
            (path, label)
            for wnid, label in index.items()
            for path in sorted((self.folder / "train" / wnid / "images").glob("*.JPEG"))
        ]

    def _val_samples(self, index: dict[str, int]) -> list[tuple[Path, int]]:
        samples = []
        for line in (self.folder / "val" / "val_annotations.txt").read_text().splitlines():
            if not line.strip():
                continue
            name, wnid = line.split("\t")[:2]
            if wnid not in index:
                raise ValueError(f"val_annotations.txt names class {wnid!r}, which wnids.txt lacks.")
            samples.append((self.folder / "val" / "images" / name, index[wnid]))
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            # About 1 in 55 Tiny-ImageNet images is grayscale; the model wants 3 channels.
            image = img.convert("RGB")
        return (self.transform(image) if self.transform else image), label


class TinyImageNetDataModule(ClassificationDataModule):
    """Tiny-ImageNet with pad-4 random crop and flip for training.

    Args:
        root: Folder holding ``tiny-imagenet-200/``.
        num_classes: Must be 200 (checked against ``wnids.txt``).
        batch_size: Training batch size ``b`` (256 in Table A.1).
        **kwargs: ``num_workers``, ``pin_memory``, ``drop_last`` of
            :class:`~lightning_asyncsam.app.data.base.ClassificationDataModule`.
    """

    def __init__(
        self, root: str | Path = "./data", num_classes: int = 200, batch_size: int = 256, **kwargs: Any
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, batch_size=batch_size, **kwargs)
        if num_classes != 200:
            raise ValueError(f"num_classes must be 200 for Tiny-ImageNet, got {num_classes!r}.")

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """The 100,000 training and 10,000 validation images."""
        folder = self.root / "tiny-imagenet-200"
        try:
            train = TinyImageNetSplit(folder, "train", crop_flip(64, IMAGENET_MEAN, IMAGENET_STD, train=True))
            val = TinyImageNetSplit(folder, "val", crop_flip(64, IMAGENET_MEAN, IMAGENET_STD, train=False))
        except FileNotFoundError as err:
            raise DatasetNotFoundError(
                "Tiny-ImageNet",
                folder,
                layout=_LAYOUT.format(folder=folder),
                how_to_get=f"download {URL} and unzip it into {self.root} (there is no downloader).",
            ) from err
        if len(train.wnids) != self.num_classes:
            raise ValueError(
                f"wnids.txt under {folder} lists {len(train.wnids)} classes; num_classes is {self.num_classes}."
            )
        return train, val
