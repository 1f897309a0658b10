"""When a step's diagnostics reach the loggers: shared by the strategies and the AsyncSAM callback."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from functools import partial

import torch

import lightning.pytorch as pl


def logs_now(trainer: "pl.Trainer") -> bool:
    """Whether this step's diagnostics reach the loggers.

    Lightning's ``log`` is not free, nor is a diagnostic that needs a pass over the gradients or a
    host sync; on short steps neither is negligible. Loggers only receive values every
    ``log_every_n_steps`` anyway, so diagnostics are computed and logged exactly then (every step
    with ``log_every_n_steps=1``), and at the end of an epoch that has not logged yet (one shorter
    than ``log_every_n_steps``), so that ``trainer.callback_metrics`` always holds values of the
    current epoch. Call it during a training step.

    Example::

        >>> import lightning as L
        >>> logs_now(L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False))
        True
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    every = trainer.log_every_n_steps
    if epoch_loop.batch_progress.is_last_batch:
        # An epoch of at least every + 1 optimizer steps has logged at one of them already.
        batches = epoch_loop.batch_progress.current.ready
        if every == 0 or batches < (every + 1) * trainer.accumulate_grad_batches:
            return True
    if trainer.fast_dev_run:
        return True
    # Lightning's `_logger_connector.should_update_logs` for the fit loop, without its lookup of the
    # running stage (string enums compared case-insensitively): a dozen calls saved on every step.
    return every != 0 and ((epoch_loop._batches_that_stepped + 1) % every == 0 or bool(trainer.should_stop))


def optimizer_step_counter(trainer: "pl.Trainer", manual: bool) -> Callable[[], int]:
    """A call with no arguments that returns ``trainer.global_step``, read from the loop's counter itself.

    The property walks seven Python calls (the epoch loop's, the trainer's and the strategy's
    ``lightning_module``, ``automatic_optimization``...), on every step of a strategy that reads it;
    this reads one attribute of the progress tracker behind it, which Lightning updates (and
    restores from a checkpoint) in place. Make it once per fit.

    Args:
        trainer: the trainer.
        manual: the module optimizes manually (``automatic_optimization`` is False).

    Example::

        >>> import lightning as L
        >>> optimizer_step_counter(L.Trainer(logger=False, enable_progress_bar=False), manual=False)()
        0
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    try:
        tracker = (epoch_loop.manual_optimization.optim_step_progress.total if manual
                   else epoch_loop.automatic_optimization.optim_progress.optimizer.step.total)
    except AttributeError:  # a Lightning release with other counters
        tracker = None
    return _completed(tracker, lambda: trainer.global_step)


def epoch_counter(trainer: "pl.Trainer") -> Callable[[], int]:
    """A call with no arguments that returns ``trainer.current_epoch``, read from the loop's counter itself.

    As :func:`optimizer_step_counter`: the property's frame and its four attribute reads, saved on
    every step that reads it (Lightning restores the tracker in place). Make it once per fit.

    Example::

        >>> import lightning as L
        >>> epoch_counter(L.Trainer(logger=False, enable_progress_bar=False))()
        0
    """
    return _completed(getattr(trainer.fit_loop.epoch_progress, "current", None), lambda: trainer.current_epoch)


def _completed(tracker: object, fallback: Callable[[], int]) -> Callable[[], int]:
    """``tracker.completed`` as a C call with no Python frame; ``fallback`` where a Lightning release has no such tracker."""
    if not hasattr(tracker, "completed"):
        return fallback
    return partial(getattr, tracker, "completed")


def publish_metrics(trainer: "pl.Trainer", metrics: dict[str, float]) -> None:
    """Hand ``metrics`` to the loggers, ``trainer.logged_metrics`` and ``callback_metrics``, not through ``self.log``.

    Lightning's ``log`` registers, moves and validates a result object per call: about 0.1 to 1 ms
    per value on a 2-core CPU, several milliseconds for a handful of diagnostics, which would
    double what a strategy adds per step even when spread over ``log_every_n_steps``. The loggers
    get the values directly, at the step at which Lightning logs its own metrics of this step; in
    a CSV log they form rows of their own at that step.

    Example::

        >>> import lightning as L
        >>> trainer = L.Trainer(logger=False, enable_progress_bar=False)
        >>> publish_metrics(trainer, {"sam/skipped_ascents": 0.0})
        >>> trainer.callback_metrics["sam/skipped_ascents"]
        tensor(0.)
    """
    connector = trainer._logger_connector
    loggers = trainer.loggers
    if loggers:
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in loggers:
            logger.log_metrics(metrics, step=step)
        # `trainer.logged_metrics`, as Lightning's own `log_metrics` keeps it: what reached the loggers, as numbers.
        logged = getattr(connector, "_logged_metrics", None)
        if logged is not None:
            logged.update(metrics)
    # The dict behind `trainer.callback_metrics`: reading that property first recomputes every value
    # that the LightningModule logged (about 0.1 ms a call here). One tensor, unbound into 0-dim
    # views, built from an array's buffer: torch.tensor() of a list costs twice as much mid-step.
    callback_metrics = getattr(connector, "_callback_metrics", None)
    if callback_metrics is None:  # pragma: no cover - a Lightning release that keeps them elsewhere
        callback_metrics = trainer.callback_metrics
    if metrics:
        values = torch.frombuffer(array("f", metrics.values()), dtype=torch.float32)
        callback_metrics.update(zip(metrics, values.unbind()))


__all__ = ["epoch_counter", "logs_now", "optimizer_step_counter", "publish_metrics"]
