"""What every datamodule of the recipes shares: loaders, argument checks, the missing-data error.

Each dataset lives in its own file and only says how to build its train and validation datasets;
this base class turns them into dataloaders the same way for all of them, so that ``b``
(``data.batch_size``, Table A.1) means the same thing in every recipe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk where the config says it is.

    The message names the path that was searched, the layout expected there and how to get the
    data, so that the user can fix ``data.root`` (or ``ASYNCSAM_DATA``) without reading the code.
    """

    def __init__(self, dataset: str, path: Path, layout: str, how_to_get: str) -> None:
        self.dataset = dataset
        self.path = Path(path)
        message = (
            f"{dataset} was not found, or is incomplete, at '{self.path}'.\n"
            f"Expected layout:\n{layout.rstrip()}\n"
            f"How to get it: {how_to_get.rstrip()}\n"
            "Point data.root (or the ASYNCSAM_DATA environment variable) at the folder that "
            "holds it."
        )
        super().__init__(message)


def check_positive_int(name: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")


class ClassificationDataModule(pl.LightningDataModule, ABC):
    """A train/validation pair of labelled datasets served with batch size ``b``.

    Subclasses implement :meth:`build_datasets`; this class checks the shared arguments, builds
    the datasets once in :meth:`setup` and serves them.

    Args:
        root: Folder that holds the dataset (``data.root``).
        num_classes: Number of classes the model predicts; subclasses check it against the data.
        batch_size: Training batch size ``b`` of Table A.1 (also used for validation).
        num_workers: DataLoader worker processes; 0 loads in the training process.
        pin_memory: Pin host memory for faster copies to a GPU.
        download: Let the dataset download itself where torchvision can (needs internet).
        drop_last: Drop the last, smaller training batch of each epoch.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        download: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("batch_size", batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}.")
        self.root = Path(root).expanduser()
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.download = download
        self.drop_last = drop_last
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @abstractmethod
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Return the (train, validation) datasets, raising :class:`DatasetNotFoundError`."""

    def prepare_data(self) -> None:
        """Download where asked; runs once per node before :meth:`setup`."""
        if self.download:
            self.download_data()

    def download_data(self) -> None:
        """Fetch the dataset into :attr:`root`; datasets without a downloader refuse."""
        raise ValueError(
            f"{type(self).__name__} has no downloader: data.download must be false; "
            "see the error raised without it for where to get the data."
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets once; Lightning calls this for every stage."""
        if self.train_set is None or self.val_set is None:
            self.train_set, self.val_set = self.build_datasets()

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for loaders.")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Re-forking workers each epoch costs seconds on big recipes; keep them alive.
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of ``b`` training samples."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Batches of the validation split, in order."""
        return self._loader(self.val_set, train=False)
