"""AsyncSAM for PyTorch Lightning: SAM's accuracy at SGD's wall-clock.

``import lightning_asyncsam`` registers the strategy names ``"asyncsam"`` and ``"sam"`` (and their
``_spawn``, ``_fork`` and ``_notebook`` variants) with Lightning, so that
``Trainer(strategy="asyncsam")`` works on an unchanged LightningModule.
"""

from lightning_asyncsam.ascent.callback import AsyncSAMCallback
from lightning_asyncsam.ascent.worker import AscentWorkerError
from lightning_asyncsam.strategies import (
    AESAMStrategy,
    AsyncSAMStrategy,
    ESAMStrategy,
    GSAMStrategy,
    LookSAMStrategy,
    MESAStrategy,
    SAMStrategy,
    SharpnessAwareStrategy,
    register_all,
)

__version__ = "0.1.0"

register_all()

__all__ = [
    "AscentWorkerError",
    "AsyncSAMCallback",
    "AsyncSAMStrategy",
    "AESAMStrategy",
    "ESAMStrategy",
    "GSAMStrategy",
    "LookSAMStrategy",
    "MESAStrategy",
    "SAMStrategy",
    "SharpnessAwareStrategy",
    "__version__",
]
