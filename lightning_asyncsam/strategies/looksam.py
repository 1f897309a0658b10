"""``LookSAMStrategy``: SAM every k steps, its orthogonal gradient reused in between (Liu et al., 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.rules_sam import looksam_orthogonal_, looksam_reuse_
from lightning_asyncsam.strategies.descent import DescentDirectionStrategy, average_over_ranks_
from lightning_asyncsam.strategies.registry import _register
from lightning_asyncsam.strategies.sam import _check_nonnegative


def _check_interval(interval: int) -> int:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval={interval!r} is not allowed: the reuse interval k must be an integer >= 1")
    return interval


class LookSAMStrategy(DescentDirectionStrategy):
    """LookSAM (Liu et al., 2022, Algorithm 1): one SAM step every k, SGD plus a kept direction in between.

    With t = ``trainer.global_step`` and k = ``interval``:

    * t mod k = 0: g = grad L(w) and e = ``rho g / ||g||`` as in SAM, g_s = grad L(w + e),
      ``g_v = g_s - (<g_s, g> / ||g||^2) g`` is kept, and d = g_s;
    * otherwise, no ascent: g = grad L(w) and ``d = g + alpha (||g|| / ||g_v||) g_v``.

    So only one step in k pays for a second pass. g_v is saved in checkpoints, and a resumed run
    continues the same trajectory; it also outlives ``fit()``, like AsyncSAM's stale gradient.
    Until the first SAM step, g_v is zero and d = g.

    A non-finite g is never applied: e is zero (that step is plain SGD at w, counted in
    ``sam/skipped_ascents``) and the previous g_v is kept. With gradient accumulation every
    micro-batch of a SAM step is perturbed by its own g, and their sum builds g_v. Under DDP,
    ``.grad`` is the mean over the ranks; g is averaged too (one all-reduce on SAM steps), so g_v
    and d are the same on every rank.

    Args:
        rho: the perturbation radius.
        interval: k, the number of steps between two SAM steps (1 is SAM).
        alpha: the weight of the reused direction (>= 0).
        **kwargs: see :class:`~lightning_asyncsam.strategies.base.SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> import lightning_asyncsam
        >>> trainer = L.Trainer(strategy="looksam", accelerator="cpu", devices=1,
        ...                     logger=False, enable_progress_bar=False, enable_checkpointing=False)
        >>> trainer.strategy.rho, trainer.strategy.interval, trainer.strategy.alpha
        (0.1, 2, 0.7)
    """

    strategy_name = "looksam"

    def __init__(self, rho: float = 0.1, interval: int = 2, alpha: float = 0.7, **kwargs: Any) -> None:
        for name in ("adaptive", "eta"):
            if name in kwargs:
                raise ValueError(
                    f"LookSAMStrategy got unexpected argument {name!r}: LookSAM has no adaptive (ASAM) form"
                )
        super().__init__(rho=rho, **kwargs)
        self.interval = _check_interval(interval)
        self.alpha = _check_nonnegative("alpha", alpha)
        self._g: list[Tensor] = []  # the sum of this step's ascent gradients g (one per micro-batch)
        self._have_g = False
        self._g_v: list[Tensor] = []

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self._g = [torch.empty_like(p) for p in self._params]
        self._have_g = False
        kept = [(v.shape, v.dtype) for v in self._g_v]
        if kept != [(p.shape, p.dtype) for p in self._params]:
            self._g_v = [torch.zeros_like(p) for p in self._params]
        else:  # a second fit() continues with the g_v of the first
            self._g_v = [v.to(p.device) for v, p in zip(self._g_v, self._params)]

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        module = self.lightning_module
        assert module is not None
        if module.trainer.global_step % self.interval != 0:
            return None
        step = self._ascent_gradient(batch, batch_idx)
        if self._have_g:
            torch._foreach_add_(self._g, step)
        else:
            torch._foreach_copy_(self._g, step)
            self._have_g = True
        self._to_ascent_step_(step)
        return step

    @override
    def _set_direction(self) -> None:
        if self._have_g:  # a SAM step: .grad is g_s, which stays d
            self._have_g = False
            average_over_ranks_(self, self._g)
            grads, g, g_v = self._with_grad(self._g, self._g_v)
            if grads:
                looksam_orthogonal_(g_v, grads, g)
        else:
            grads, g_v = self._with_grad(self._g_v)
            if grads:
                looksam_reuse_(grads, g_v, self.alpha)

    @override
    def rule_state_dict(self) -> dict[str, Any]:
        return {"g_v": [v.detach().cpu().clone() for v in self._g_v]} if self._g_v else {}

    @override
    def rule_load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("g_v")
        if saved is None:
            return
        if [tuple(v.shape) for v in saved] != [tuple(v.shape) for v in self._g_v]:
            raise ValueError(
                "LookSAMStrategy: the checkpoint's g_v does not match the trainable parameters' shapes; it was "
                "saved for another model"
            )
        torch._foreach_copy_(self._g_v, [v.to(device=g.device, dtype=g.dtype) for v, g in zip(saved, self._g_v)])

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "looksam", "LookSAM, SAM every k steps with the ascent reused in between")


__all__ = ["LookSAMStrategy"]
