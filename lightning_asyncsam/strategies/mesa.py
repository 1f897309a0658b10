"""``MESAStrategy``: sharpness-aware training for free, memory-efficient form (Du et al., 2022)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.rules_efficient import ema_update_, mesa_loss
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy, _no_logging
from lightning_asyncsam.strategies.efficient_args import check_count, check_real
from lightning_asyncsam.strategies.per_sample import batch_of, call_per_sample, check_per_sample, descent_per_sample
from lightning_asyncsam.strategies.registry import _register


class MESAStrategy(SharpnessAwareStrategy):
    """MESA (Du et al., 2022, "Sharpness-Aware Training for Free", NeurIPS 2022, Sec. 4.3): the
    memory-efficient form of SAF, one forward and one backward per step, no ascent.

    * An exponential moving average of the module (parameters and buffers, decay beta) is updated
      after every optimizer step, and saved in checkpoints.
    * From epoch ``start_epoch`` on (Lightning's ``current_epoch``, counted from 0), the loss is
      ``mean_i l_i + lam * tau^2 * mean_i KL(softmax(z_ema_i / tau) || softmax(z_i / tau))``, where z
      and l come from one forward of the module, and z_ema from the averaged weights, without
      gradient. Before ``start_epoch``, and with ``lam = 0``, it is plain SGD on ``mean_i l_i``.

    The averaged weights live in one copy of the parameters and buffers, not in a second module: for
    z_ema they are swapped into the module, which runs in eval mode (no dropout, BatchNorm on the
    averaged running statistics) under ``torch.no_grad()``, and the live weights are copied back.

    The module's ``training_step`` does not run: MESA calls
    ``per_sample(self, batch) -> (logits [b, C], losses [b])``. A module without the hook raises a
    ValueError naming it.

    Args:
        beta: the decay of the moving average, in [0, 1).
        lam: lambda, the weight of the KL term, >= 0.
        tau: the temperature of the softmaxes, > 0.
        start_epoch: the first epoch with the KL term.
        start_method: see :class:`SharpnessAwareStrategy`.
        **kwargs: see :class:`SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> trainer = L.Trainer(strategy=MESAStrategy(beta=0.995, lam=0.8, tau=1.5, start_epoch=5),
        ...                     accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        ...                     enable_checkpointing=False)
        >>> trainer.strategy.start_epoch
        5
    """

    strategy_name = "mesa"

    def __init__(self, beta: float = 0.995, lam: float = 0.8, tau: float = 1.5, start_epoch: int = 5,
                 start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen", **kwargs: Any) -> None:
        super().__init__(start_method=start_method, **kwargs)
        self.beta = check_real("beta", beta, 0.0, 1.0, high_open=True)
        self.lam = check_real("lam", lam, 0.0)
        self.tau = check_real("tau", tau, 0.0, low_open=True)
        self.start_epoch = check_count("start_epoch", start_epoch)
        self._live: list[Tensor] = []
        self._ema: list[Tensor] = []
        self._swap: list[Tensor] = []

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            module = self.lightning_module
            assert module is not None
            check_per_sample(self, module)
            self._live = [t for t in module.parameters()] + [t for t in module.buffers()]
            self._ema = [t.detach().clone() for t in self._live]
            self._swap = [torch.empty_like(t) for t in self._live]

    @override
    def rule_state_dict(self) -> dict[str, Any]:
        return {"ema": [t.detach().cpu().clone() for t in self._ema]}

    @override
    def rule_load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["ema"]
        if len(saved) != len(self._ema) or any(a.shape != b.shape for a, b in zip(saved, self._ema)):
            raise ValueError("MESAStrategy: the checkpoint's moving average does not match the module's tensors")
        with torch.no_grad():
            for e, s in zip(self._ema, saved):
                e.copy_(s)

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        return None  # MESA never perturbs the weights

    def _kl_active(self) -> bool:
        module = self.lightning_module
        assert module is not None
        return self.lam > 0 and module.trainer.current_epoch >= self.start_epoch

    @torch.no_grad()
    def _ema_logits(self, batch: Any) -> Tensor:
        """z_ema: the module's logits with the averaged weights swapped in, in eval mode."""
        module = self.lightning_module
        assert module is not None
        modes = [(m, m.training) for m in module.modules()]
        torch._foreach_copy_(self._swap, self._live)
        torch._foreach_copy_(self._live, self._ema)
        try:
            module.eval()
            with self.precision_plugin.train_step_context(), _no_logging(module):
                logits, _ = call_per_sample(module, batch)
        finally:
            for m, mode in modes:
                m.training = mode
            torch._foreach_copy_(self._live, self._swap)
        return logits.detach()

    @override
    def _descent(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        batch = batch_of(args, kwargs)
        ema_logits = self._ema_logits(batch) if self._kl_active() else None
        logits, losses = descent_per_sample(self, batch)
        if ema_logits is None:
            return losses.mean()
        wide = torch.promote_types(logits.dtype, torch.float32)  # the KL in at least float32 under bf16
        return mesa_loss(losses, logits.to(wide), ema_logits.to(wide), self.lam, self.tau)

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any],
                       model: "pl.LightningModule | torch.nn.Module | None" = None, **kwargs: Any) -> Any:
        out = super().optimizer_step(optimizer, closure, model, **kwargs)
        ema_update_(self._ema, self._live, self.beta)  # MESA Eq. 6, after every optimizer step
        return out

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "mesa", "MESA: SGD plus a KL term towards a moving average of the weights")


__all__ = ["MESAStrategy"]
