"""``SharpnessAwareStrategy``: what ``SAMStrategy`` and ``AsyncSAMStrategy`` share, as Lightning strategies.

Both perturb the weights around the user's unchanged ``training_step``:

* the perturbation is applied at the start of :meth:`training_step`, outside the precision
  plugin's autocast context, under ``torch.no_grad()``;
* the weights are restored, by copying a backup, in :meth:`post_backward`, so that gradient
  clipping, ``on_before_optimizer_step`` and ``optimizer.step()`` see the original weights w_t
  with the descent gradient taken at the perturbed point;
* both points sit inside Lightning's closure, so every accumulation micro-batch is perturbed and
  restored, and :meth:`optimizer_step` restores as a safety net when a step skipped its backward.

They differ in where the ascent direction comes from: SAM computes it synchronously on the same
batch (two passes per step); AsyncSAM takes it, one step stale, from a worker process that ran
concurrently with the previous step (Algorithm 1 of Jo, Lim, Lee).

Both are :class:`~lightning.pytorch.strategies.DDPStrategy` subclasses so that they run on 1..N
devices like ``"ddp"``. With a single process they skip the process group, the DDP wrapper and
the launcher entirely, so one-device runs pay nothing for DDP and work in notebooks.
"""

from __future__ import annotations

import difflib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.fabric.utilities.distributed import _distributed_is_initialized
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.functional import perturb_, restore_
from lightning_asyncsam.logging_steps import logs_now, publish_metrics
from lightning_asyncsam.strategies.state import RuleStateCallback
from lightning_asyncsam.strategies.process_exit import release_process_group_at_exit


def _check_rho(rho: float) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"rho={rho!r} is not allowed: the perturbation radius must be a finite number > 0")
    return float(rho)


def _parameters(fn: Callable[..., Any]) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}


def _check_kwargs(cls: type, kwargs: dict[str, Any]) -> None:
    """Reject what neither the strategy, DDPStrategy nor DistributedDataParallel accepts.

    DDPStrategy forwards unknown keywords to DistributedDataParallel, which only sees them with
    several processes: with one, a misspelt ``ascent_batchsize=8`` would vanish silently.
    """
    passed_on = (_parameters(DDPStrategy.__init__) | _parameters(DistributedDataParallel.__init__)) - {"module"}
    unknown = sorted(set(kwargs) - passed_on)
    if not unknown:
        return
    own = set().union(*(_parameters(c.__init__) for c in cls.__mro__ if issubclass(c, SharpnessAwareStrategy)))
    known = sorted(own | passed_on)
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
        f"{cls.__name__} got unexpected argument(s) {', '.join(hints)}: neither {cls.__name__}, "
        "DDPStrategy nor DistributedDataParallel accepts them"
    )


class SharpnessAwareStrategy(DDPStrategy):
    """Shared machinery: which weights are perturbed, perturb/restore, and single-process mode.

    Subclasses provide :meth:`_ascent_step`, the step ``e = rho * d / ||d||`` in ``w + e``.

    Args:
        rho: the perturbation radius r of Eq. 3.
        start_method: how to launch several processes: ``"popen"`` (like ``"ddp"``),
            ``"spawn"`` or ``"fork"`` (notebooks). Ignored with a single process.
        **kwargs: passed on to :class:`~lightning.pytorch.strategies.DDPStrategy` (and by it to
            :class:`~torch.nn.parallel.DistributedDataParallel`); any other name raises a ValueError.
    """

    _own_descent = False  # see __init_subclass__

    def __init__(self, rho: float = 0.05, start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
                 **kwargs: Any) -> None:
        _check_kwargs(type(self), kwargs)
        super().__init__(start_method=start_method, **kwargs)
        self.rho = _check_rho(rho)
        self._params: list[Tensor] = []
        self._backup: list[Tensor] = []
        self._perturbed = False
        self.perturb_ms = 0.0
        self._skipped: Tensor | None = None  # non-finite ascents this fit, counted on the device
        self._skips_warned = False
        self._pending_rule_state: dict[str, Any] | None = None  # from a checkpoint, see on_train_start
        self._owns_process_group = False
        self._interrupted = False
        self._root: torch.device | None = None  # root_device, fixed from setup to teardown (see root_device)
        self._one_process = True  # _single_process, as set up: what the per-step hooks read
        self._manual = False  # the module optimizes manually (read once per fit: a property walk per step)
        self._params_warned = False  # _adopt_trainable warned in this fit: no more checks
        # Trainer-thread time that the strategy's own code added to the steps, in ms, a running total
        # (AsyncSAM's callback reads differences of it): every override that Lightning calls per batch
        # adds its share.
        self.added_ms = 0.0
        # Whether this optimizer step's closure ends with _after_closure (AsyncSAM: a logging step's
        # diagnostics). A flag, not a call on every step: a call costs about a microsecond mid-step.
        self._after_closure_due = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A rule that computes its own descent (ESAM, MESA) overrides _descent; the others run the
        # module's training_step without that frame in between.
        cls._own_descent = cls._descent is not SharpnessAwareStrategy._descent

    # ----------------------------------------------------------------- single-process mode
    @property
    def _single_process(self) -> bool:
        # num_nodes * num_processes, read from the attributes behind them: this runs on every step.
        devices = self._parallel_devices
        return self._num_nodes * (len(devices) if devices is not None else 0) <= 1

    @override
    def _configure_launcher(self) -> None:
        if self._single_process:
            self._launcher = None
            return
        super()._configure_launcher()

    @override
    def setup_distributed(self) -> None:
        if self._single_process:
            self.set_world_ranks()
            module = self.lightning_module
            if module is not None and module._trainer is not None:
                # A DDPStrategy makes Lightning swap in a shuffling DistributedSampler, even for one process.
                # One process needs no sampler of ours: keep the user's data order, as "auto" would.
                module._trainer._accelerator_connector.use_distributed_sampler = False
            return
        if not _distributed_is_initialized():
            # Ours to release (see teardown); a group the user created themselves stays theirs. A later
            # stage of the same Trainer finds ours initialized, and it stays ours.
            self._owns_process_group = True
        super().setup_distributed()

    @override
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model if self._single_process else super()._setup_model(model)

    @property
    @override
    def root_device(self) -> torch.device:
        # DDPStrategy's reads the cluster environment (an environment-variable lookup) on every call,
        # and Lightning asks for it on every batch; it cannot change between setup and teardown.
        root = self._root
        return root if root is not None else super().root_device

    @override
    def pre_backward(self, closure_loss: Tensor) -> None:
        # One process has no DDP wrapper, which is all that DDPStrategy's hooks look after; the base
        # Strategy's hook is empty (a test checks it), and a call costs a microsecond mid-step.
        if not self._one_process:
            super().pre_backward(closure_loss)

    # ----------------------------------------------------------------- the rule's state
    @override
    def connect(self, model: "pl.LightningModule") -> None:
        super().connect(model)
        trainer = model._trainer
        # A rule without state needs no callback: even a batch-free one costs Lightning's dispatch
        # a lookup per hook per batch (see lightning_asyncsam.batch_free).
        stateful = type(self).rule_state_dict is not SharpnessAwareStrategy.rule_state_dict
        if (stateful and trainer is not None
                and not any(isinstance(c, RuleStateCallback) for c in trainer.callbacks)):
            trainer.callbacks.append(RuleStateCallback(self))

    def rule_state_dict(self) -> dict[str, Any]:
        """The rule's own state for checkpoints: plain CPU tensors and Python scalars (none by default).

        A subclass that overrides it gets a :class:`~lightning_asyncsam.strategies.state.RuleStateCallback`
        on the trainer, which carries the state through checkpoints.
        """
        return {}

    def rule_load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rule_state_dict` saved; called in ``on_train_start`` of a resumed fit."""

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        state, self._pending_rule_state = self._pending_rule_state, None
        if state:
            self.rule_load_state_dict(state)

    # ----------------------------------------------------------------- non-finite ascents
    def _note_ascent(self, finite: Tensor) -> None:
        """Count an ascent whose step was zeroed for being non-finite, on the device (no host sync)."""
        bad = (~finite).to(torch.int64)
        self._skipped = bad if self._skipped is None else self._skipped.add_(bad)

    def _report_skips(self, log: bool) -> None:
        """Log ``sam/skipped_ascents`` and warn once when an ascent was skipped (one host sync)."""
        if self._skipped is None:
            return
        count = int(self._skipped)
        module = self.lightning_module
        if log and module is not None:
            publish_metrics(module.trainer, {"sam/skipped_ascents": float(count)})
        if count and not self._skips_warned:
            self._skips_warned = True
            rank_zero_warn(
                f"{type(self).__name__}: {count} ascent step(s) had a non-finite gradient (NaN or inf) and were not "
                "applied; those steps descended at the unperturbed weights. The ascent batch holds data the descent "
                "does not see or drops: check the data, or make `ascent_loss` drop non-finite samples as "
                "`training_step` does. Counted in `sam/skipped_ascents`."
            )

    @override
    def on_train_end(self) -> None:
        self._report_skips(log=False)
        super().on_train_end()

    # ----------------------------------------------------------------- the perturbed weights
    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        if self._single_process:
            # DDPStrategy.setup would wrap the model and broadcast its state over a process group
            # that a single process does not have; the plain Strategy.setup is what one device needs.
            Strategy.setup(self, trainer)
        else:
            super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            module = self.lightning_module
            self._manual = module is not None and not module.automatic_optimization
            self._collect_params()
            self._params_warned = False
            self._skipped, self._skips_warned = None, False
        self._root = None
        self._root = self.root_device
        self._one_process = self._single_process

    def _trainable_params(self) -> list[Tensor]:
        """The parameters the optimizers update: the ones Eq. 3's global norm runs over."""
        seen: set[int] = set()
        params: list[Tensor] = []
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.requires_grad and id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
        if not params:
            module = self.lightning_module
            raise ValueError(
                f"{type(self).__name__}: the module {type(module).__name__} has no trainable parameters in its "
                "optimizers; SAM needs at least one parameter with requires_grad=True"
            )
        return params

    def _collect_params(self) -> None:
        """The parameters the optimizers train (see _trainable_params), and a backup shaped like them."""
        self._params = self._trainable_params()
        self._backup = [torch.empty_like(p) for p in self._params]

    def _check_trainable(self) -> None:
        """Whether the optimizers now train parameters that they did not when the fit started (once an epoch)."""
        known = {id(p) for p in self._params}
        new = [p for opt in self.optimizers for group in opt.param_groups for p in group["params"]
               if p.requires_grad and id(p) not in known]
        if new:
            self._adopt_trainable(new)

    def _adopt_trainable(self, new: list[Tensor]) -> None:
        """Parameters that the optimizers train since mid-fit: not perturbed here, a warning once per fit.

        AsyncSAM overrides it: its rule keeps no per-parameter state, and its worker restarts with them.
        """
        self._params_warned = True
        rank_zero_warn(
            f"{type(self).__name__}: the optimizers now train {len(new)} parameter(s) that they did not train when "
            "the fit started (a param group added or a layer unfrozen mid-fit, as Lightning's BackboneFinetuning "
            "does). The sharpness-aware perturbation covers only the parameters of the fit's start: the new ones "
            "are updated, but never perturbed. To perturb them, train them from the start (for example in their "
            "own param group with a learning rate of 0 that a scheduler raises later)."
        )

    def _asam_flags(self) -> list[bool]:
        """Per trainable parameter: whether ASAM's T = |w| + eta applies (its name ends in ``weight``)."""
        module = self.lightning_module
        assert module is not None
        names = {id(p): n for n, p in module.named_parameters()}
        return [names.get(id(p), "").endswith("weight") for p in self._params]

    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        """The step e to add to the weights for this micro-batch, or None to leave them alone."""
        raise NotImplementedError

    def _perturb(self, step: Sequence[Tensor]) -> None:
        start = time.perf_counter()
        perturb_(self._params, step, self._backup)
        self._perturbed = True
        self.perturb_ms += (time.perf_counter() - start) * 1e3

    def _restore(self) -> None:
        if self._perturbed:
            start = time.perf_counter()
            with torch.no_grad():
                restore_(self._params, self._backup)
            self._perturbed = False
            self.perturb_ms += (time.perf_counter() - start) * 1e3

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        start = time.perf_counter()
        if self._perturbed:  # a previous micro-batch that skipped its backward left the weights perturbed
            self._restore()
        batch = args[0] if args else kwargs.get("batch")
        batch_idx = args[1] if len(args) > 1 else kwargs.get("batch_idx", 0)
        if batch_idx == 0 and not self._params_warned:  # once an epoch
            self._check_trainable()
        step = self._ascent_step(batch, batch_idx)
        if step is not None:
            self._perturb(step)
        descent = time.perf_counter()
        try:
            out = self._descent(*args, **kwargs) if self._own_descent else super().training_step(*args, **kwargs)
        except BaseException:
            self._restore()
            raise
        end = time.perf_counter()
        if out is None or self._manual:
            # No backward follows (skipped step), or it already ran inside a manual training_step.
            self._restore()
        if self._skipped is not None and self._lightning_module is not None and logs_now(self._lightning_module.trainer):
            self._report_skips(log=True)
        # What this step added to the trainer's thread (see added_ms), outside the user's training_step.
        self.added_ms += (descent - start + time.perf_counter() - end) * 1e3
        return out

    def _descent(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """The descent pass at the (perturbed) weights: the module's ``training_step``, unless a rule
        computes its own loss (ESAM and MESA call the module's ``per_sample`` instead)."""
        return super().training_step(*args, **kwargs)

    @override
    def post_backward(self, closure_loss: Tensor) -> None:
        start = time.perf_counter()
        if not self._one_process:  # Strategy.post_backward is empty, as pre_backward
            super().post_backward(closure_loss)
        if self._perturbed:
            self._restore()
        self.added_ms += (time.perf_counter() - start) * 1e3

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any],
                       model: "pl.LightningModule | torch.nn.Module | None" = None, **kwargs: Any) -> Any:
        def restoring_closure() -> Any:
            try:
                out = closure()
            finally:
                start = time.perf_counter()
                if self._perturbed:
                    self._restore()
            if self._after_closure_due:
                self._after_closure()
            self.added_ms += (time.perf_counter() - start) * 1e3
            return out

        if self._one_process:  # DDPStrategy's adds only post-local-SGD averaging, which needs several processes
            return Strategy.optimizer_step(self, optimizer, restoring_closure, model, **kwargs)
        return super().optimizer_step(optimizer, restoring_closure, model, **kwargs)

    def _after_closure(self) -> None:
        """Runs when a step's closure (forward, backward, restore) has run, before clipping and the update.

        Only where :attr:`_after_closure_due` is set, for the step at hand.
        """

    @override
    def on_exception(self, exception: BaseException) -> None:
        self._interrupted = True
        self._restore()
        super().on_exception(exception)

    @override
    def teardown(self) -> None:
        super().teardown()
        self._root = None
        if self._owns_process_group and not self._interrupted and _distributed_is_initialized():
            # No rank starts to exit while a peer still communicates with it; skipped after an
            # exception, when a failed peer may never come.
            self.barrier("SharpnessAwareStrategy.teardown")
            # Not destroyed here: on_fit_end and teardown hooks run after this and may communicate,
            # and a popen-launched script reuses the group in its next stage. At exit, before the
            # interpreter finalizes: a gloo thread caught finalizing aborts the rank (see process_exit).
            release_process_group_at_exit()
        self._interrupted = False

    def _check_loss_source(self) -> None:
        module = self.lightning_module
        if module is not None and not module.automatic_optimization and not callable(getattr(module, "ascent_loss", None)):
            raise ValueError(
                f"{type(self).__name__}: {type(module).__name__} uses manual optimization, so its training_step "
                "cannot serve as the ascent loss; define `ascent_loss(self, batch) -> Tensor` on the module"
            )


@contextmanager
def _no_logging(module: LightningModule) -> Any:
    """Silence ``self.log`` while the ascent pass reruns the user's training_step."""
    module.__dict__["log"] = lambda *a, **k: None
    module.__dict__["log_dict"] = lambda *a, **k: None
    try:
        yield
    finally:
        module.__dict__.pop("log", None)
        module.__dict__.pop("log_dict", None)


__all__ = ["SharpnessAwareStrategy"]
