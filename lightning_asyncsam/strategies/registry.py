"""Registration of the strategy names (``"sam"``, ``"asyncsam"`` and their variants) with Lightning."""

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
    """Register ``"sam"``, ``"asyncsam"`` and their ``_spawn``/``_fork``/``_notebook`` variants."""
    # Imported here, not at the top: the strategy modules import _register from this one.
    from lightning_asyncsam.strategies.asyncsam import AsyncSAMStrategy
    from lightning_asyncsam.strategies.sam import SAMStrategy

    SAMStrategy.register_strategies(registry)
    AsyncSAMStrategy.register_strategies(registry)
    # family2: ESAM, AE-SAM, MESA
    from lightning_asyncsam.strategies.aesam import AESAMStrategy
    from lightning_asyncsam.strategies.esam import ESAMStrategy
    from lightning_asyncsam.strategies.mesa import MESAStrategy

    ESAMStrategy.register_strategies(registry)
    AESAMStrategy.register_strategies(registry)
    MESAStrategy.register_strategies(registry)


__all__ = ["register_all"]
