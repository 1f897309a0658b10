"""``DescentDirectionStrategy``: the base of the SAM variants that rebuild the descent direction from ``.grad``.

GSAM and LookSAM do not step along the gradient of the last backward: they combine it with the
ascent gradient g of the same step (GSAM), or with a direction kept from an earlier step (LookSAM).
That happens once per optimizer step, after every micro-batch's backward and the restore of the
weights, and before clipping, ``on_before_optimizer_step`` and ``optimizer.step()``: inside the
closure that the strategy hands to the precision plugin (in manual optimization, inside the
module's ``opt.step()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy
from lightning_asyncsam.strategies.sam import SAMStrategy


class DescentDirectionStrategy(SAMStrategy):
    """SAM whose descent direction d is rebuilt from ``.grad`` once per optimizer step.

    Subclasses implement :meth:`_set_direction`, which overwrites ``.grad`` with d. Under DDP,
    ``.grad`` is then already the mean over the ranks; :func:`average_over_ranks_` brings the
    rule's own tensors (its ascent gradient) to the same mean, so that every rank steps alike.

    Limits, each raised as a ValueError when ``fit`` starts: one optimizer (d is built over all
    trainable parameters at once), and no gradient scaler (``precision="16-mixed"`` on a GPU):
    ``.grad`` would still be scaled while the ascent gradient is not; use ``"bf16-mixed"``.

    Args:
        **kwargs: see :class:`~lightning_asyncsam.strategies.sam.SAMStrategy`.

    Example::

        >>> from lightning_asyncsam import GSAMStrategy, LookSAMStrategy
        >>> [issubclass(c, DescentDirectionStrategy) for c in (SAMStrategy, GSAMStrategy, LookSAMStrategy)]
        [False, True, True]
    """

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        name = type(self).__name__
        if len(self.optimizers) != 1:
            raise ValueError(
                f"{name} supports one optimizer, got {len(self.optimizers)}: its descent direction is built over "
                "all trainable parameters together"
            )
        if getattr(self.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"{name} does not support a gradient scaler (precision='16-mixed'): it combines the scaled `.grad` "
                "with the unscaled ascent gradient; use precision='bf16-mixed' or '32-true'"
            )

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any],
                       model: "pl.LightningModule | torch.nn.Module | None" = None, **kwargs: Any) -> Any:
        def closure_then_direction() -> Any:
            out = closure()
            self._restore()
            self._set_direction()
            return out

        return super().optimizer_step(optimizer, closure_then_direction, model, **kwargs)

    def _set_direction(self) -> None:
        """Overwrite ``.grad`` with the rule's descent direction d (the weights are w again)."""
        raise NotImplementedError

    def _with_grad(self, *per_param: Sequence[Tensor]) -> list[list[Tensor]]:
        """``[.grad, *per_param]``, each kept only for the parameters whose ``.grad`` exists."""
        keep = [i for i, p in enumerate(self._params) if p.grad is not None]
        grads = [self._params[i].grad for i in keep]
        return [grads] + [[tensors[i] for i in keep] for tensors in per_param]  # type: ignore[misc]


@torch.no_grad()
def average_over_ranks_(strategy: SharpnessAwareStrategy, tensors: Sequence[Tensor]) -> None:
    """Replace per-rank tensors by their mean over the ranks, with one all-reduce; nothing with one process.

    Example::

        >>> g = [torch.tensor([1.0, 2.0])]
        >>> average_over_ranks_(SAMStrategy(), g)  # one process: unchanged
        >>> g[0]
        tensor([1., 2.])
    """
    if strategy._single_process or not tensors:
        return
    tensors = list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat.div_(strategy.world_size)
    torch._foreach_copy_(tensors, [f.view_as(t) for f, t in zip(flat.split([t.numel() for t in tensors]), tensors)])


__all__ = ["DescentDirectionStrategy", "average_over_ranks_"]
