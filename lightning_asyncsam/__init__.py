"""AsyncSAM for PyTorch Lightning: SAM's accuracy at SGD's wall-clock.

``import lightning_asyncsam`` registers the strategy names ``"asyncsam"`` and ``"sam"`` (and their
``_spawn``, ``_fork`` and ``_notebook`` variants) with Lightning, so that
``Trainer(strategy="asyncsam")`` works on an unchanged LightningModule.
"""

from lightning_asyncsam.ascent.callback import AsyncSAMCallback
from lightning_asyncsam.ascent.worker import AscentWorkerError
from lightning_asyncsam.strategies import AsyncSAMStrategy, SAMStrategy, SharpnessAwareStrategy, register_all
from lightning_asyncsam.strategies import AESAMStrategy, ESAMStrategy, MESAStrategy  # family2

__version__ = "0.1.0"

register_all()

__all__ = [
    "AscentWorkerError",
    "AsyncSAMCallback",
    "AsyncSAMStrategy",
    "AESAMStrategy",  # family2
    "ESAMStrategy",  # family2
    "MESAStrategy",  # family2
    "SAMStrategy",
    "SharpnessAwareStrategy",
    "__version__",
]
