"""``SAMStrategy``: synchronous SAM (Foret et al.) and ASAM (Kwon et al.), ascent and descent on the same batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.ascent.loss import ascent_loss
from lightning_asyncsam.functional import adaptive_ascent_step_, scale_to_radius_
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy, _no_logging
from lightning_asyncsam.strategies.registry import _register


def _check_flag(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: expected True or False")
    return value


def _check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed: expected a finite number >= 0")
    return float(value)


class SAMStrategy(SharpnessAwareStrategy):
    """Synchronous SAM (Foret et al., 2021), or ASAM (Kwon et al., 2021) with ``adaptive=True``.

    The baseline of Table 4.1. For each (micro-)batch B: g = grad L(w; B), and the descent
    forward and backward run at w + e, with

    * SAM: ``e = rho g / ||g||``;
    * ASAM: ``e = rho T^2 g / ||T g||``, ``T = |w| + eta`` for the parameters whose name ends in
      ``weight`` and 1 for the others (as in SamsungLabs/ASAM).

    d = grad L(w + e; B), and the weights are restored to w before clipping and the optimizer step.
    The ascent pass reruns the module's ``training_step`` with logging silenced (or its
    ``ascent_loss(batch)`` when defined) and takes its gradient with ``torch.autograd.grad``, so
    ``.grad`` only ever holds the descent gradient. An ascent gradient that is not finite is never
    applied: that step descends at w, and ``sam/skipped_ascents`` counts it.

    Args:
        rho: the perturbation radius (Kwon et al. use a larger one for ASAM: ``"asam"`` is
            ``rho=0.5``).
        adaptive: use ASAM's scale-invariant step.
        eta: ASAM's offset in T, which keeps T > 0 at zero weights.
        **kwargs: see :class:`SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> import lightning_asyncsam
        >>> trainer = L.Trainer(strategy="asam", accelerator="cpu", devices=1,
        ...                     logger=False, enable_progress_bar=False, enable_checkpointing=False)
        >>> trainer.strategy.rho, trainer.strategy.adaptive, trainer.strategy.eta
        (0.5, True, 0.01)
    """

    strategy_name = "sam"

    def __init__(self, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01, **kwargs: Any) -> None:
        super().__init__(rho=rho, **kwargs)
        self.adaptive = _check_flag("adaptive", adaptive)
        self.eta = _check_nonnegative("eta", eta)
        self._scaled: list[bool] = []  # per parameter: True where ASAM's T = |w| + eta

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self._check_loss_source()
            self._scaled = self._asam_flags()

    def _ascent_gradient(self, batch: Any, batch_idx: int) -> list[Tensor]:
        """g = grad L(w; B), from the module's ascent loss; zeros for parameters it does not reach."""
        module = self.lightning_module
        assert module is not None
        with torch.enable_grad(), self.precision_plugin.train_step_context(), _no_logging(module):
            loss = ascent_loss(module, batch, batch_idx)
        grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]

    def _to_ascent_step_(self, g: list[Tensor]) -> Tensor:
        """Turn g into e in place (SAM's or ASAM's), count it when it was not finite; return ||g|| (or ||T g||)."""
        if self.adaptive:
            norm = adaptive_ascent_step_(g, self._params, self._scaled, self.rho, self.eta)
        else:
            norm = scale_to_radius_(g, self.rho)
        self._note_ascent(torch.isfinite(norm))
        return norm

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        step = self._ascent_gradient(batch, batch_idx)
        self._to_ascent_step_(step)
        return step

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "sam", "synchronous SAM (two passes per step)")
        _register(strategy_registry, cls, "asam", "synchronous ASAM, adaptive SAM (two passes per step)",
                  rho=0.5, adaptive=True)


__all__ = ["SAMStrategy"]
