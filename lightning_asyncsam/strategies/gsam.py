"""``GSAMStrategy``: Surrogate Gap Guided SAM (Zhuang et al., 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.functional import zero_if_nonfinite_
from lightning_asyncsam.rules_sam import gsam_direction_
from lightning_asyncsam.strategies.descent import DescentDirectionStrategy, average_over_ranks_
from lightning_asyncsam.strategies.registry import _register
from lightning_asyncsam.strategies.sam import _check_nonnegative


class GSAMStrategy(DescentDirectionStrategy):
    """GSAM (Zhuang et al., 2022, Algorithm 1): SAM's step plus a descent on the surrogate gap.

    For each batch B: g = grad L(w; B) and e as in SAM (``rho g / ||g||``, or ASAM's with
    ``adaptive=True``); g_p = grad L(w + e; B);
    ``g_perp = g - (<g, g_p> / ||g_p||^2) g_p`` and ``d = g_p - alpha g_perp``, which ``.grad``
    holds when clipping and the optimizer step see it (at the restored weights w). ``alpha=0`` is SAM.

    A non-finite g is never applied: e and g_perp are zero, so that step is plain SGD at w, counted
    in ``sam/skipped_ascents``. Under DDP each rank perturbs with its own g, as in SAM; g is then
    averaged over the ranks (one all-reduce per step) before the decomposition. Because g_perp is
    linear in g for a given g_p, that equals averaging each rank's d, which is what GSAM's
    reference code (juntang-zhuang/GSAM) does, and every rank steps alike.

    GSAM is defined for one batch per step: ``accumulate_grad_batches > 1`` raises a ValueError.

    Args:
        rho: the perturbation radius.
        alpha: the weight of the surrogate-gap direction g_perp (>= 0).
        adaptive: use ASAM's e (Kwon et al.): ``rho T^2 g / ||T g||``.
        eta: ASAM's offset in T.
        **kwargs: see :class:`~lightning_asyncsam.strategies.base.SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> import lightning_asyncsam
        >>> trainer = L.Trainer(strategy="gsam", accelerator="cpu", devices=1,
        ...                     logger=False, enable_progress_bar=False, enable_checkpointing=False)
        >>> trainer.strategy.rho, trainer.strategy.alpha
        (0.1, 0.8)
    """

    strategy_name = "gsam"

    def __init__(self, rho: float = 0.1, alpha: float = 0.8, adaptive: bool = False, eta: float = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(rho=rho, adaptive=adaptive, eta=eta, **kwargs)
        self.alpha = _check_nonnegative("alpha", alpha)
        self._g: list[Tensor] = []  # the ascent gradient g of this step, kept for the decomposition
        self._have_g = False

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"GSAMStrategy does not support accumulate_grad_batches={trainer.accumulate_grad_batches}: GSAM "
                "decomposes the ascent and the descent gradient of one batch (Zhuang et al. define it so); use 1"
            )
        self._g = [torch.empty_like(p) for p in self._params]
        self._have_g = False

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        step = self._ascent_gradient(batch, batch_idx)
        torch._foreach_copy_(self._g, step)
        zero_if_nonfinite_(self._g, self._to_ascent_step_(step))
        self._have_g = True
        return step

    @override
    def _set_direction(self) -> None:
        if not self._have_g:  # no ascent ran since the last step: nothing to decompose
            return
        self._have_g = False
        average_over_ranks_(self, self._g)
        grads, g = self._with_grad(self._g)
        if grads:
            gsam_direction_(grads, g, self.alpha)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "gsam", "GSAM, surrogate gap guided SAM (two passes per step)")


__all__ = ["GSAMStrategy"]
