"""The sharpness-aware Lightning strategies: ``SAMStrategy`` and ``AsyncSAMStrategy``."""

from lightning_asyncsam.strategies.asyncsam import AsyncSAMStrategy
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy
from lightning_asyncsam.strategies.registry import register_all
from lightning_asyncsam.strategies.sam import SAMStrategy
from lightning_asyncsam.strategies.aesam import AESAMStrategy  # family2
from lightning_asyncsam.strategies.esam import ESAMStrategy  # family2
from lightning_asyncsam.strategies.mesa import MESAStrategy  # family2

__all__ = ["AsyncSAMStrategy", "SAMStrategy", "SharpnessAwareStrategy", "register_all"]
__all__ += ["AESAMStrategy", "ESAMStrategy", "MESAStrategy"]  # family2
