"""``SAMStrategy``: synchronous SAM (Foret et al.), ascent and descent on the same batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.ascent.loss import ascent_loss
from lightning_asyncsam.functional import scale_to_radius_
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy, _no_logging
from lightning_asyncsam.strategies.registry import _register


class SAMStrategy(SharpnessAwareStrategy):
    """Synchronous SAM (Foret et al.): ascent and descent on the same batch, two passes per step.

    The baseline of Table 4.1. For each (micro-)batch B_t: g = grad L(w_t; B_t); the descent
    forward and backward run at ``w_t + rho * g / ||g||``; the weights are restored to w_t before
    clipping and the optimizer step. The ascent pass reruns the module's ``training_step`` with
    logging silenced (or its ``ascent_loss(batch)`` when defined) and takes its gradient with
    ``torch.autograd.grad``, so ``.grad`` only ever holds the descent gradient.

    Args:
        rho: the perturbation radius.
        **kwargs: see :class:`SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> trainer = L.Trainer(strategy=SAMStrategy(rho=0.05), accelerator="cpu", devices=1,
        ...                     logger=False, enable_progress_bar=False, enable_checkpointing=False)
        >>> trainer.strategy.rho
        0.05
    """

    strategy_name = "sam"

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self._check_loss_source()

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        module = self.lightning_module
        assert module is not None
        with torch.enable_grad(), self.precision_plugin.train_step_context(), _no_logging(module):
            loss = ascent_loss(module, batch, batch_idx)
        grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        step = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
        self._note_ascent(torch.isfinite(scale_to_radius_(step, self.rho)))
        return step

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "sam", "synchronous SAM (two passes per step)")


__all__ = ["SAMStrategy"]
