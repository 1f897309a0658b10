"""scikit-learn's 8x8 handwritten digits: the recipe that runs anywhere in under two minutes.

The data (1,797 images, 10 classes) ships inside scikit-learn, so nothing is downloaded and
``data.root`` is not used. The split is stratified and seeded by ``split_seed`` rather than by the
run's seed, so that every seed of a sweep is scored on the same validation images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_asyncsam.app.data.base import ClassificationDataModule

#: Pixel values in ``load_digits`` are counts of set pixels in a 4x4 block: 0..16.
_MAX_PIXEL = 16.0


class DigitsDataModule(ClassificationDataModule):
    """The scikit-learn digits as ``[N, 1, 8, 8]`` float tensors normalised to zero mean, unit std.

    Args:
        batch_size: Training batch size ``b``.
        val_fraction: Share of the 1,797 images held out for validation, in (0, 1).
        split_seed: Seed of the stratified split (not the run's seed; see the module docstring).
        root: Unused (the data ships with scikit-learn); kept so every datamodule has one.
        num_classes: Must be 10.
        **kwargs: ``num_workers``, ``pin_memory``, ``drop_last`` of
            :class:`~lightning_asyncsam.app.data.base.ClassificationDataModule`.

    Example::

        dm = DigitsDataModule(batch_size=32)
        dm.setup()
        x, y = next(iter(dm.train_dataloader()))   # x: [32, 1, 8, 8]
    """

    def __init__(
        self,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        root: str | Path = ".",
        num_classes: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, batch_size=batch_size, **kwargs)
        if num_classes != 10:
            raise ValueError(f"num_classes must be 10 for the digits dataset, got {num_classes!r}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Split, then normalise with the training images' statistics only."""
        # Imported here: scikit-learn costs a second of import time the other recipes do not need.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        images, labels = load_digits(return_X_y=True)
        images = images.reshape(-1, 1, 8, 8).astype(np.float32) / _MAX_PIXEL
        x_train, x_val, y_train, y_val = train_test_split(
            images, labels, test_size=self.val_fraction, stratify=labels, random_state=self.split_seed
        )
        mean, std = float(x_train.mean()), float(x_train.std())
        return self._tensor_dataset(x_train, y_train, mean, std), self._tensor_dataset(x_val, y_val, mean, std)

    @staticmethod
    def _tensor_dataset(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> TensorDataset:
        return TensorDataset(torch.from_numpy((images - mean) / std), torch.from_numpy(labels).long())
