"""Registration of the strategy names (``"sam"``, ``"asam"``, ``"asyncsam"``, ``"gsam"``, ``"looksam"``, ...) with Lightning."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import StrategyRegistry

_START_METHODS = {"": "popen", "_spawn": "spawn", "_fork": "fork", "_notebook": "fork"}


def _register(registry: Any, cls: type, name: str, what: str, **init_params: Any) -> None:
    """Register ``name`` and its ``_spawn``/``_fork``/``_notebook`` variants; ``init_params`` preset arguments."""
    for suffix, start_method in _START_METHODS.items():
        registry.register(
            f"{name}{suffix}",
            cls,
            description=f"{what}; multi-process start method '{start_method}'",
            override=True,
            start_method=start_method,
            **init_params,
        )


def register_all(registry: Any = StrategyRegistry) -> None:
    """Register every strategy name (``"sam"``, ``"asam"``, ``"asyncsam"``, ...) and its variants.

    Each name also gets ``_spawn``, ``_fork`` and ``_notebook`` variants (see :func:`_register`).
    """
    # Imported here, not at the top: the strategy modules import _register from this one.
    from lightning_asyncsam.strategies.aesam import AESAMStrategy
    from lightning_asyncsam.strategies.asyncsam import AsyncSAMStrategy
    from lightning_asyncsam.strategies.esam import ESAMStrategy
    from lightning_asyncsam.strategies.gsam import GSAMStrategy
    from lightning_asyncsam.strategies.looksam import LookSAMStrategy
    from lightning_asyncsam.strategies.mesa import MESAStrategy
    from lightning_asyncsam.strategies.sam import SAMStrategy

    for cls in (SAMStrategy, AsyncSAMStrategy, GSAMStrategy, LookSAMStrategy, ESAMStrategy, AESAMStrategy, MESAStrategy):
        cls.register_strategies(registry)  # SAMStrategy registers "sam" and "asam"


__all__ = ["register_all"]
