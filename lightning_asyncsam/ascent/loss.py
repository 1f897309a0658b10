"""The ascent loss: what the worker (AsyncSAM) and the synchronous ascent pass (SAM) differentiate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


def ascent_loss(module: nn.Module, batch: Any, batch_idx: int) -> Tensor:
    """The loss whose gradient is the ascent direction.

    A module's own ``ascent_loss(batch)`` wins; otherwise its ``training_step(batch, batch_idx)``,
    which may return the loss or a mapping holding it under ``"loss"``.
    """
    custom = getattr(module, "ascent_loss", None)
    out = custom(batch) if callable(custom) else module.training_step(batch, batch_idx)  # type: ignore[operator]
    if isinstance(out, Mapping):
        out = out.get("loss")
    if not isinstance(out, Tensor):
        raise TypeError(
            "AsyncSAM's ascent worker needs a loss tensor: `training_step` returned "
            f"{type(out).__name__}. Define `ascent_loss(self, batch) -> Tensor` on the module."
        )
    return out


__all__ = ["ascent_loss"]
