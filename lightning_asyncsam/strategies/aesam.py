"""``AESAMStrategy``: SAM only where the loss landscape looks sharp (Jiang et al., 2023)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.ascent.loss import ascent_loss
from lightning_asyncsam.functional import scale_to_radius_
from lightning_asyncsam.rules_efficient import aesam_coefficient, aesam_moments, aesam_use_sam, squared_norm
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy, _no_logging
from lightning_asyncsam.strategies.efficient_args import check_real
from lightning_asyncsam.strategies.registry import _register


class AESAMStrategy(SharpnessAwareStrategy):
    """AE-SAM (Jiang et al., 2023, "An Adaptive Policy to Employ Sharpness-Aware Minimization",
    ICLR 2023, Algorithm 1): a SAM step where ``||g||^2`` is high against its running statistics,
    an SGD step elsewhere.

    For each (micro-)batch B at global step t:

    * ``g = grad L(w; B)`` and ``q = ||g||^2``;
    * ``mu <- delta * mu + (1 - delta) * q`` and ``sigma^2 <- delta * sigma^2 + (1 - delta) * (q - mu)^2``
      (both start at 0, sigma^2 uses the updated mu; both go in checkpoints);
    * ``c = (t / T) * lambda1 + (1 - t / T) * lambda2`` with ``T = trainer.estimated_stepping_batches``;
    * if ``q >= mu + c * sigma``: ``d = grad L(w + rho * g / ||g||; B)`` (SAM), else ``d = g`` (SGD).

    The ascent pass is SAM's (the module's ``training_step`` rerun with logging silenced, or its
    ``ascent_loss(batch)``). Under DDP, g is all-reduced before q is taken, so that every rank takes
    the same branch. The branch needs q on the host: one device-to-host sync per (micro-)batch is
    inherent to the rule. A non-finite q leaves the moments alone, is counted in
    ``sam/skipped_ascents`` and takes the SGD branch.

    An SGD step costs one forward and backward, the saving AE-SAM is for: when the ascent pass is
    the module's own ``training_step`` (no ``ascent_loss``), its gradient g is put in ``.grad``
    through a loss with the same value whose gradient is g, and the logs it made are replayed. With
    an ``ascent_loss``, after a non-finite q, and under DDP with accumulation, the SGD step runs the
    module's ``training_step`` at w instead. ``sam_steps`` counts the SAM steps of the fit.

    Args:
        rho: the perturbation radius.
        lambda1: c at the end of training.
        lambda2: c at the start of training.
        decay: delta, the decay of the running moments, in [0, 1).
        start_method: see :class:`SharpnessAwareStrategy`.
        **kwargs: see :class:`SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> trainer = L.Trainer(strategy=AESAMStrategy(rho=0.1, lambda1=-1.0, lambda2=1.0, decay=0.9),
        ...                     accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        ...                     enable_checkpointing=False)
        >>> trainer.strategy.decay
        0.9
    """

    strategy_name = "aesam"

    def __init__(self, rho: float = 0.1, lambda1: float = -1.0, lambda2: float = 1.0, decay: float = 0.9,
                 start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen", **kwargs: Any) -> None:
        super().__init__(rho=rho, start_method=start_method, **kwargs)
        self.lambda1 = check_real("lambda1", lambda1)
        self.lambda2 = check_real("lambda2", lambda2)
        self.decay = check_real("decay", decay, 0.0, 1.0, high_open=True)
        self.mu = 0.0
        self.var = 0.0
        self.sam_steps = 0
        self._total_steps = math.inf
        # An SGD step's descent from its ascent pass: (training_step's output, loss, g, logs to replay).
        self._sgd_step: tuple[Any, Tensor, list[Tensor], list[tuple[str, tuple[Any, ...], dict[str, Any]]]] | None = None

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self._check_loss_source()
            self.mu, self.var, self.sam_steps = 0.0, 0.0, 0

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        module = self.lightning_module
        assert module is not None
        self._total_steps = max(float(module.trainer.estimated_stepping_batches), 1.0)

    @override
    def rule_state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "var": self.var, "sam_steps": self.sam_steps}

    @override
    def rule_load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu, self.var, self.sam_steps = float(state["mu"]), float(state["var"]), int(state["sam_steps"])

    def _all_reduce_mean_(self, tensors: list[Tensor]) -> None:
        """Average the ascent gradient over the ranks, in one collective."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        for t, f in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(f.view_as(t))

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        module = self.lightning_module
        assert module is not None
        self._sgd_step = None
        # Without an `ascent_loss`, the ascent pass is the module's own training_step at w: on an SGD
        # step its gradient is d itself, and its logs are the step's logs (kept to replay them).
        own_step = not callable(getattr(module, "ascent_loss", None))
        logs: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        quiet = _recording_logs(module, logs) if own_step else _no_logging(module)
        with torch.enable_grad(), self.precision_plugin.train_step_context(), quiet:
            out = module.training_step(batch, batch_idx) if own_step else None
            loss = _loss_of(out)
            if loss is None:  # an ascent_loss, or a training_step without a loss (its TypeError names the fix)
                out, loss = None, ascent_loss(module, batch, batch_idx)
        grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        step = [torch.zeros_like(p) if g is None else g for p, g in zip(self._params, grads)]
        if not self._single_process:
            self._all_reduce_mean_(step)
        q = float(squared_norm(step))  # the rule's one host sync: the branch is taken on the host
        finite = math.isfinite(q)
        self._note_ascent(torch.tensor(finite, device=step[0].device))
        if not finite:
            return None  # the module's training_step descends at w (and may drop what broke the ascent)
        self.mu, self.var = aesam_moments(q, self.mu, self.var, self.decay)
        c = aesam_coefficient(module.trainer.global_step, self._total_steps, self.lambda1, self.lambda2)
        if aesam_use_sam(q, self.mu, self.var, c):
            self.sam_steps += 1
            scale_to_radius_(step, self.rho)
            return step
        # With accumulation under DDP, a micro-batch whose backward DDP syncs must go through DDP's
        # forward; the reused gradient would skip that sync, so it only serves where no sync is missed.
        if own_step and (self._single_process or module.trainer.accumulate_grad_batches == 1):
            self._sgd_step = (out, loss.detach(), step, logs)
        return None

    @override
    def _descent(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        pending, self._sgd_step = self._sgd_step, None
        if pending is None:
            return super()._descent(*args, **kwargs)
        out, loss, grads, logs = pending
        module = self.lightning_module
        assert module is not None
        for name, log_args, log_kwargs in logs:
            getattr(module, name)(*log_args, **log_kwargs)
        # A loss with the ascent's value whose gradient is g: its backward costs one multiply per weight
        # instead of the second forward and backward through the network. Under DDP, g is already the
        # all-reduced gradient and no DDP forward ran, so DDP does not reduce it again.
        with torch.enable_grad():
            dot = torch.stack([(p * g).sum() for p, g in zip(self._params, grads)]).sum()
            surrogate = loss.to(dot.dtype) + (dot - dot.detach())
        return {**out, "loss": surrogate} if isinstance(out, Mapping) else surrogate

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "aesam", "AE-SAM: SAM or SGD each step, by the gradient norm's statistics")


def _loss_of(out: Any) -> Tensor | None:
    loss = out.get("loss") if isinstance(out, Mapping) else out
    return loss if isinstance(loss, Tensor) else None


@contextmanager
def _recording_logs(module: LightningModule, logs: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> Iterator[None]:
    """Hold back ``self.log``/``self.log_dict`` calls in ``logs``, to replay them if the pass becomes the descent."""
    for name in ("log", "log_dict"):
        module.__dict__[name] = lambda *a, _name=name, **k: logs.append((_name, a, k))
    try:
        yield
    finally:
        module.__dict__.pop("log", None)
        module.__dict__.pop("log_dict", None)


__all__ = ["AESAMStrategy"]
