"""The ascent replica's view of the world: a read-only stand-in for the Trainer, and compilation.

AsyncSAM's worker runs the user's ``training_step`` (or ``ascent_loss``) on a detached copy of the
module, in another process, away from the Trainer. Real training steps read the trainer all the
same: an epoch-based warm-up (``self.current_epoch``), ``self.trainer.max_epochs`` in a schedule,
``self.trainer.optimizers[0].param_groups[0]["lr"]`` logged beside the loss. The replica therefore
gets a :class:`TrainerStandIn` holding the trainer's scalar state: the values that never change
during a fit travel once, at the first step, and afterwards only what changed (the epoch, the
optimizers' hyperparameters such as the learning rate: numbers that change alone, as a scheduler's do,
through shared memory, :mod:`lightning_asyncsam.ascent.hyperparameters`); the global step is the
step number itself.
Anything else raises :class:`ReplicaAttributeError`, which names the attribute and the remedy.

In the replica ``self.log`` and ``self.log_dict`` do nothing (the trainer logs the real step),
``self.logger`` is None, and ``self.optimizers()`` returns the read-only optimizers of the
stand-in.

A module compiled with ``torch.compile`` (which Lightning turns into the module itself, its
``forward`` and ``*_step`` methods wrapped, :func:`lightning.pytorch.utilities.compile.from_compiled`)
travels uncompiled, with its compile context beside it (:func:`compile_settings`), and the replica
compiles its own ``forward``, ``training_step`` and ``ascent_loss`` the same way
(:func:`compile_replica`), with the same backend, mode and options, on its own device.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from torch import nn

from lightning_asyncsam.ascent.hyperparameters import plain_hyperparameters

# What a fit never changes, read once at the first step (names of Trainer properties).
STATIC_FIELDS = (
    "max_epochs", "min_epochs", "max_steps", "min_steps", "estimated_stepping_batches", "num_training_batches",
    "accumulate_grad_batches", "world_size", "global_rank", "local_rank", "node_rank", "num_nodes", "num_devices",
    "is_global_zero", "fast_dev_run", "precision", "log_every_n_steps", "check_val_every_n_epoch",
    "gradient_clip_val", "gradient_clip_algorithm", "default_root_dir",
)
_STEP_METHODS = ("forward", "training_step", "validation_step", "test_step", "predict_step")


class ReplicaAttributeError(AttributeError):
    """What the replica's trainer (or module) cannot provide: an AttributeError, so ``getattr(x, n, d)`` works."""


def _unavailable(what: str) -> ReplicaAttributeError:
    return ReplicaAttributeError(
        f"{what} is not available to AsyncSAM's ascent: the ascent runs `training_step` in a replica of the module "
        "in a worker process, away from the Trainer, which sees only the trainer's scalar state (current_epoch, "
        "global_step, max_epochs, max_steps, estimated_stepping_batches, the optimizers' learning rates, ...). "
        "Define `ascent_loss(self, batch)` on the LightningModule to compute the ascent loss without it."
    )


class ReadOnlyOptimizer:
    """An optimizer as the replica sees it: ``param_groups`` holds each group's hyperparameters, read-only."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        # The dicts behind the read-only views: SharedHyperparameters.apply writes a scheduler's new numbers there.
        self._groups = [dict(g) for g in groups]
        self.param_groups = [MappingProxyType(g) for g in self._groups]

    def __getattr__(self, name: str) -> Any:
        raise _unavailable(f"`optimizer.{name}`")

    def __repr__(self) -> str:
        return f"ReadOnlyOptimizer(param_groups={[dict(g) for g in self.param_groups]})"


class TrainerStandIn:
    """The trainer as AsyncSAM's ascent replica sees it: scalar state, kept current, read-only.

    Example::

        >>> t = TrainerStandIn({"max_epochs": 3, "current_epoch": 1, "optimizers": [[{"lr": 0.1}]]})
        >>> t.max_epochs, t.current_epoch, t.optimizers[0].param_groups[0]["lr"], t.training
        (3, 1, 0.1, True)
        >>> getattr(t, "datamodule", None) is None  # an AttributeError, so defaults work
        True
        >>> t.datamodule
        Traceback (most recent call last):
        ...
        lightning_asyncsam.ascent.replica.ReplicaAttributeError: `self.trainer.datamodule` is not available ...
    """

    training = True
    sanity_checking = validating = testing = predicting = False
    logger = None
    loggers: list = []

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self.update({"global_step": 0, "current_epoch": 0, "optimizers": [], **(state or {})})

    def update(self, state: Mapping[str, Any]) -> None:
        """Take new values (``optimizers`` as a list of lists of hyperparameter dicts)."""
        for name, value in state.items():
            if name == "optimizers":
                value = [ReadOnlyOptimizer(groups) for groups in value]
            object.__setattr__(self, name, value)

    def _hyperparameter_groups(self) -> list[list[dict[str, Any]]]:
        """The optimizers' hyperparameter dicts behind the read-only views (for the worker's updates, not the user)."""
        return [opt._groups for opt in self.optimizers]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # pickle and copy probe dunders: a plain miss
        raise _unavailable(f"`self.trainer.{name}`")

    def __setattr__(self, name: str, value: Any) -> None:
        raise _unavailable(f"setting `self.trainer.{name}`")


# ------------------------------------------------------------------ the main process's side
def trainer_statics(trainer: Any) -> dict[str, Any]:
    """The trainer's state that a fit never changes (call it once the training loop runs)."""
    out: dict[str, Any] = {}
    for name in STATIC_FIELDS:
        try:
            value = getattr(trainer, name)
        except Exception:  # noqa: BLE001 - a property that cannot answer here stays unavailable
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def trainer_dynamics(trainer: Any) -> dict[str, Any]:
    """The state that changes during a fit, besides the global step: the epoch and the optimizers' hyperparameters."""
    return {"current_epoch": trainer.current_epoch,
            "optimizers": [[plain_hyperparameters(g) for g in opt.param_groups] for opt in trainer.optimizers]}


# ------------------------------------------------------------------ the replica's side
def attach_stand_in(module: nn.Module, trainer: TrainerStandIn) -> None:
    """Give a LightningModule replica the stand-in, and make its trainer-bound methods safe there."""
    if not hasattr(module, "_trainer"):
        return  # a plain nn.Module reads no trainer
    for sub in module.modules():
        if hasattr(sub, "_trainer"):
            sub.__dict__["_trainer"] = trainer
            # The trainer logs the real step; the replica's values would be duplicates.
            sub.__dict__["log"] = _no_op
            sub.__dict__["log_dict"] = _no_op
            sub.__dict__["optimizers"] = _optimizers(trainer)
            sub.__dict__["lr_schedulers"] = _refuse("`self.lr_schedulers()`")
            sub.__dict__["manual_backward"] = _refuse("`self.manual_backward()` (return the loss from "
                                                      "`ascent_loss`: the worker differentiates it)")
            sub.__dict__["all_gather"] = _refuse("`self.all_gather()`")


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def _optimizers(trainer: TrainerStandIn) -> Any:
    def optimizers(use_pl_optimizer: bool = True) -> Any:
        opts = trainer.optimizers
        return opts[0] if len(opts) == 1 else opts
    return optimizers


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _unavailable(what)
    return refuse


# ------------------------------------------------------------------ torch.compile
def compile_settings(module: nn.Module) -> Any:
    """The compile context Lightning keeps on a compiled module (``dynamo_ctx``), or None."""
    ctx = getattr(module, "_compiler_ctx", None)
    return ctx.get("dynamo_ctx") if isinstance(ctx, Mapping) else None


@contextmanager
def uncompiled(module: nn.Module) -> Iterator[None]:
    """Present ``module`` without its compile wrappers (which cannot be pickled) and restore them after."""
    ctx = getattr(module, "_compiler_ctx", None)
    if not isinstance(ctx, Mapping):
        yield
        return
    saved = {name: module.__dict__.pop(name) for name in _STEP_METHODS if name in module.__dict__}
    module.__dict__["_compiler_ctx"] = None
    try:
        yield
    finally:
        module.__dict__.update(saved)
        module.__dict__["_compiler_ctx"] = ctx


def compile_replica(module: nn.Module, dynamo_ctx: Any) -> None:
    """Wrap the replica's ``forward``, ``training_step`` and ``ascent_loss`` as Lightning's ``from_compiled`` does."""
    for name in ("forward", "training_step", "ascent_loss"):
        method = getattr(module, name, None)
        if callable(method):
            module.__dict__[name] = dynamo_ctx(method)


__all__ = ["ReplicaAttributeError", "TrainerStandIn", "attach_stand_in", "compile_replica", "compile_settings",
           "trainer_dynamics", "trainer_statics", "uncompiled"]
