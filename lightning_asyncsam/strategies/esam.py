"""``ESAMStrategy``: Efficient SAM (Du et al., 2022), as in dydjw9/Efficient_SAM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.functional import scale_to_radius_
from lightning_asyncsam.rules_efficient import esam_keep_mask, esam_radius, esam_select, esam_subset_size
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy, _no_logging
from lightning_asyncsam.strategies.efficient_args import check_count, check_real
from lightning_asyncsam.strategies.per_sample import batch_of, call_per_sample, check_per_sample, descent_per_sample
from lightning_asyncsam.strategies.registry import _register


class ESAMStrategy(SharpnessAwareStrategy):
    """ESAM (Du et al., 2022, "Efficient Sharpness-aware Minimization for Improved Training of
    Neural Networks", ICLR 2022): SAM with a random subset of the weights perturbed (SWP) and the
    descent on the sharpest samples only (SDS).

    For each (micro-)batch B of b samples, with per-sample losses ``l_i`` from the module's
    ``per_sample`` hook:

    * each parameter tensor is kept with probability beta (a seeded generator, saved in checkpoints);
    * ``g_m = grad L(w; B)`` over the kept tensors (zero elsewhere; the others' gradients are not
      computed), and ``e = rho * g_m / (beta * ||g_m||)``;
    * S is the ``ceil(gamma * b)`` samples with the largest ``l_i(w + e) - l_i(w)``, and
      ``d = grad mean_{i in S} l_i(w + e)``.

    With ``gamma < 1`` the sharpness is measured by a forward without gradient at w + e, and the
    descent's forward and backward run on S only (indexing every tensor of the batch along its first
    dimension). A sample whose loss is not finite ranks last. ``beta = gamma = 1`` is exactly SAM.

    The module's ``training_step`` does not run: ESAM calls
    ``per_sample(self, batch) -> (logits [b, C], losses [b])``, and its loss is the mean of
    ``losses``. A module without the hook raises a ValueError naming it.

    Args:
        rho: the perturbation radius.
        beta: the probability that a parameter tensor is perturbed, in (0, 1].
        gamma: the fraction of the batch the descent keeps, in (0, 1].
        seed: seeds the generator that draws the kept tensors (the same on every rank).
        start_method: see :class:`SharpnessAwareStrategy`.
        **kwargs: see :class:`SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> trainer = L.Trainer(strategy=ESAMStrategy(rho=0.1, beta=0.6, gamma=0.6), accelerator="cpu",
        ...                     devices=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
        >>> trainer.strategy.beta, trainer.strategy.gamma
        (0.6, 0.6)
    """

    strategy_name = "esam"

    def __init__(self, rho: float = 0.1, beta: float = 0.6, gamma: float = 0.6, seed: int = 0,
                 start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen", **kwargs: Any) -> None:
        super().__init__(rho=rho, start_method=start_method, **kwargs)
        self.beta = check_real("beta", beta, 0.0, 1.0, low_open=True)
        self.gamma = check_real("gamma", gamma, 0.0, 1.0, low_open=True)
        self.seed = check_count("seed", seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._loss_before: Tensor | None = None

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            assert self.lightning_module is not None
            check_per_sample(self, self.lightning_module)
            self._generator = torch.Generator().manual_seed(self.seed)

    @override
    def __getstate__(self) -> dict:
        # A torch.Generator does not survive the spawn launcher's pickling: carry its state as bytes.
        state = super().__getstate__()
        state["_generator"] = self._generator.get_state().numpy().tobytes()
        return state

    @override
    def __setstate__(self, state: dict) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["_generator"]), dtype=torch.uint8))
        super().__setstate__({**state, "_generator": generator})

    @override
    def rule_state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    @override
    def rule_load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        module = self.lightning_module
        assert module is not None
        keep = esam_keep_mask(len(self._params), self.beta, self._generator)
        with torch.enable_grad(), self.precision_plugin.train_step_context(), _no_logging(module):
            _, losses = call_per_sample(module, batch)
        self._loss_before = losses.detach()
        step = [torch.zeros_like(p) for p in self._params]
        kept = [i for i, k in enumerate(keep) if k]
        if kept:
            # Only the kept tensors' gradients are asked for: autograd skips the others' weight gradients.
            grads = torch.autograd.grad(losses.mean(), [self._params[i] for i in kept], allow_unused=True)
            for i, g in zip(kept, grads):
                if g is not None:
                    step[i] = g
        self._note_ascent(torch.isfinite(scale_to_radius_(step, esam_radius(self.rho, self.beta))))
        return step

    @override
    def _descent(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        batch = batch_of(args, kwargs)
        before, self._loss_before = self._loss_before, None
        assert before is not None, "ESAM's descent runs after its ascent"
        k = esam_subset_size(self.gamma, before.shape[0])
        if k < before.shape[0]:
            module = self.lightning_module
            assert module is not None
            with torch.no_grad(), self.precision_plugin.train_step_context(), _no_logging(module):
                _, after = call_per_sample(module, batch)
            index = esam_select(before, after, k)
            batch = apply_to_collection(batch, Tensor, lambda t: t[index.to(t.device)])
        _, losses = descent_per_sample(self, batch)
        return losses.mean()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "esam", "ESAM: SAM on a random subset of the weights and the sharpest samples")


__all__ = ["ESAMStrategy"]
