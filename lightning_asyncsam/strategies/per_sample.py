"""The ``per_sample`` hook that ESAM and MESA call instead of the module's ``training_step``.

Both need what a scalar loss hides: ESAM ranks the samples by their loss, MESA needs the logits.
The module defines ``per_sample(self, batch) -> (logits [b, C], losses [b])``; its loss is then
``losses.mean()``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import Strategy
from torch import Tensor

PER_SAMPLE_SIGNATURE = "`per_sample(self, batch) -> (logits [b, C], losses [b])`"


def check_per_sample(strategy: object, module: LightningModule) -> None:
    """Raise a ValueError naming the hook when ``module`` cannot serve a per-sample rule.

    Example::

        >>> import lightning as L
        >>> from lightning_asyncsam import ESAMStrategy
        >>> try:
        ...     check_per_sample(ESAMStrategy(), L.LightningModule())
        ... except ValueError as err:
        ...     print(str(err)[:66])
        ESAMStrategy needs the module's per-sample outputs: LightningModul
    """
    name = type(strategy).__name__
    if not callable(getattr(module, "per_sample", None)):
        raise ValueError(
            f"{name} needs the module's per-sample outputs: {type(module).__name__} has no `per_sample` hook. "
            f"Define {PER_SAMPLE_SIGNATURE} on the module; its training_step does not run under {name}."
        )
    if not module.automatic_optimization:
        raise ValueError(
            f"{name} computes the loss itself from `per_sample` and so cannot run a manual-optimization "
            f"training_step; {type(module).__name__} sets automatic_optimization=False"
        )


def call_per_sample(module: LightningModule, batch: Any) -> tuple[Tensor, Tensor]:
    """``module.per_sample(batch)``, checked: a ``[b, C]`` logits tensor and a ``[b]`` loss tensor.

    Example::

        >>> import torch
        >>> class M(torch.nn.Module):
        ...     def per_sample(self, batch):
        ...         return torch.zeros(2, 3), torch.ones(2)
        >>> call_per_sample(M(), None)[1]
        tensor([1., 1.])
    """
    out = module.per_sample(batch)
    return check_output(out, type(module).__name__)


def descent_per_sample(strategy: Strategy, batch: Any) -> tuple[Tensor, Tensor]:
    """``per_sample(batch)`` for the descent: through the DDP wrapper (so DDP reduces its gradient),
    inside the precision plugin's autocast, as Lightning runs ``training_step``."""
    module = strategy.lightning_module
    assert module is not None and strategy.model is not None
    with strategy.precision_plugin.train_step_context():
        if strategy.model is not module:
            out = strategy._forward_redirection(strategy.model, module, "per_sample", batch)
        else:
            out = module.per_sample(batch)
    return check_output(out, type(module).__name__)


def batch_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The batch among the arguments Lightning passes to ``training_step``."""
    return args[0] if args else kwargs["batch"]


def check_output(out: Any, owner: str) -> tuple[Tensor, Tensor]:
    """Check what ``per_sample`` returned (see :func:`call_per_sample`)."""
    ok = isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)
    if ok:
        logits, losses = out
        ok = losses.dim() == 1 and logits.dim() >= 1 and logits.shape[0] == losses.shape[0]
    if not ok:
        raise TypeError(f"{owner}.per_sample must return (logits [b, C], losses [b]); got {out!r:.200}")
    return out[0], out[1]


__all__ = ["PER_SAMPLE_SIGNATURE", "batch_of", "call_per_sample", "check_output", "check_per_sample", "descent_per_sample"]
