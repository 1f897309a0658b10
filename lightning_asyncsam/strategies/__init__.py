"""The sharpness-aware Lightning strategies: AsyncSAM and the SAM family of the paper's Table 4.1."""

from lightning_asyncsam.strategies.aesam import AESAMStrategy
from lightning_asyncsam.strategies.asyncsam import AsyncSAMStrategy
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy
from lightning_asyncsam.strategies.esam import ESAMStrategy
from lightning_asyncsam.strategies.gsam import GSAMStrategy
from lightning_asyncsam.strategies.looksam import LookSAMStrategy
from lightning_asyncsam.strategies.mesa import MESAStrategy
from lightning_asyncsam.strategies.registry import register_all
from lightning_asyncsam.strategies.sam import SAMStrategy

__all__ = [
    "AESAMStrategy",
    "AsyncSAMStrategy",
    "ESAMStrategy",
    "GSAMStrategy",
    "LookSAMStrategy",
    "MESAStrategy",
    "SAMStrategy",
    "SharpnessAwareStrategy",
    "register_all",
]
