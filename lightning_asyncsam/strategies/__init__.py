"""The sharpness-aware Lightning strategies: ``SAMStrategy`` and ``AsyncSAMStrategy``."""

from lightning_asyncsam.strategies.asyncsam import AsyncSAMStrategy
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy
from lightning_asyncsam.strategies.gsam import GSAMStrategy
from lightning_asyncsam.strategies.looksam import LookSAMStrategy
from lightning_asyncsam.strategies.registry import register_all
from lightning_asyncsam.strategies.sam import SAMStrategy

__all__ = [
    "AsyncSAMStrategy",
    "GSAMStrategy",
    "LookSAMStrategy",
    "SAMStrategy",
    "SharpnessAwareStrategy",
    "register_all",
]
