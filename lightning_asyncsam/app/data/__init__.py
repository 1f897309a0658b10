"""One LightningDataModule per dataset of the paper's Table 4.1, plus scikit-learn's digits.

Every datamodule reads from ``data.root``, serves batches of ``b = data.batch_size`` and, when
its data is missing, raises :class:`DatasetNotFoundError` saying where it looked, what layout it
expects and how to get the data.
"""

from lightning_asyncsam.app.data.base import ClassificationDataModule, DatasetNotFoundError
from lightning_asyncsam.app.data.cifar import CIFARDataModule
from lightning_asyncsam.app.data.digits import DigitsDataModule
from lightning_asyncsam.app.data.flowers102 import Flowers102DataModule
from lightning_asyncsam.app.data.speech_commands import SpeechCommandsDataModule
from lightning_asyncsam.app.data.tiny_imagenet import TinyImageNetDataModule

__all__ = [
    "CIFARDataModule",
    "ClassificationDataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "Flowers102DataModule",
    "SpeechCommandsDataModule",
    "TinyImageNetDataModule",
]
