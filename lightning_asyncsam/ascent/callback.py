"""``AsyncSAMCallback``: the per-step synchronization of AsyncSAM, its diagnostics and its state.

:class:`~lightning_asyncsam.strategies.asyncsam.AsyncSAMStrategy` appends this callback to the trainer by
itself; users never add it. At the first micro-batch of optimizer step t, the strategy's own
``training_step`` (which runs anyway) calls :meth:`AsyncSAMCallback.synchronize`, which

1. collects ``g_{t-1}`` from the worker (waiting only if it is not ready: strict tau = 1) and
   hands it to the strategy as this step's perturbation direction, unless its norm is not finite
   (then the step runs unperturbed, and the skip is counted and warned about once per fit),
2. publishes ``w_t`` and the ascent batch ``A_t`` to the worker and starts ``g_t``.

Lightning never calls this callback on a batch (it is a
:class:`~lightning_asyncsam.batch_free.BatchFreeCallback`: Lightning's dispatch of a callback's
six per-batch hooks costs the trainer's thread tens of microseconds per step, for nothing). Its
per-step work rides on calls that SGD pays too: the synchronization on the strategy's
``training_step``, the diagnostics on its ``optimizer_step`` (:meth:`AsyncSAMCallback.after_closure`
once the descent gradient exists, :meth:`AsyncSAMCallback.end_step` after the update). The
diagnostics (the cosine, a pass over the gradients) are computed and handed to the loggers
(directly, see :func:`~lightning_asyncsam.logging_steps.publish_metrics`) only on the steps whose
values reach the loggers (:func:`~lightning_asyncsam.logging_steps.logs_now`), once per optimizer
step; :attr:`AsyncSAMCallback.metrics` holds them on every step. The callback also keeps the stale
gradient in the checkpoint, so that a resumed run continues the trajectory of the uninterrupted one.

``asyncsam/overhead_ms`` is everything this callback and the strategy add to the trainer's thread
per optimizer step, averaged over the steps since the last log: the strategy times each of its
overrides that Lightning calls per batch (``batch_to_device``, ``training_step`` around the user's
own, ``post_backward``, ``optimizer_step`` and its closure around Lightning's) and the lookahead
loader times itself, so the synchronization (collection, the direction, publishing, the batch
hand-over), perturb and restore, the safety nets, the diagnostics and the logging all count.
Waiting for a late (or still starting) worker is ``asyncsam/wait_ms``, apart. What no timer inside
can see: the overrides' own call frames and the caches that this work takes from SGD's. The
running totals ``overhead_total_ms`` and ``wait_total_ms`` serve benchmarks/overhead.py.

It sees the strategy only through :class:`AscentHost`, the attributes it uses, so that this module
does not import :mod:`lightning_asyncsam.strategies` (which imports it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.ascent.autotune import AscentBatchTuner
from lightning_asyncsam.ascent.buffers import BatchSlot, FlatTensors
from lightning_asyncsam.ascent.worker import AscentResult, AscentWorker
from lightning_asyncsam.batch_free import BatchFreeCallback
from torch._C._nn import flatten_dense_tensors

from lightning_asyncsam.functional import EPS, cosine_similarity, gram_cosine_similarity, known_norm_cosine_similarity
from lightning_asyncsam.logging_steps import logs_now, publish_metrics


class AscentHost(Protocol):
    """What the callback uses of its strategy (:class:`~lightning_asyncsam.strategies.asyncsam.AsyncSAMStrategy`)."""

    worker: AscentWorker | None
    ascent_batch_size: int | float | str
    ascent_data: str
    worker_device: str
    cpu_batch: Any
    lend_upcoming: bool | None
    direction: Sequence[Tensor] | None
    _direction_flats: list[Tensor]
    _params: list[Tensor]
    perturb_ms: float
    added_ms: float
    rho: float

    @property
    def root_device(self) -> torch.device: ...

    @property
    def threads(self) -> int: ...

    def use_gradient(self, grads: FlatTensors | None, scaled: bool = False) -> None: ...

    def added_total_ms(self) -> float: ...

    def publish(self, worker: AscentWorker) -> None: ...

    def next_step_batch(self) -> Any: ...


class AsyncSAMCallback(BatchFreeCallback):
    """Synchronizes the ascent worker with the training loop (added by :class:`~lightning_asyncsam.AsyncSAMStrategy`).

    Example::

        >>> import lightning as L
        >>> from lightning_asyncsam import AsyncSAMStrategy
        >>> trainer = L.Trainer(strategy=AsyncSAMStrategy(ascent_batch_size=8), accelerator="cpu", devices=1,
        ...                     logger=False, enable_progress_bar=False, enable_checkpointing=False)
        >>> # the callback joins trainer.callbacks when fit() connects the model
    """

    def __init__(self) -> None:
        self._tuner: AscentBatchTuner | None = None
        # The optimizer step whose first micro-batch was synchronized (a later micro-batch of it needs
        # nothing): read by the strategy at every micro-batch, as an attribute.
        self.synced_step: int | None = None
        self._ended_step: int | None = None    # optimizer step whose end was accounted (end_step)
        self._step: int | None = None          # optimizer step whose held gradient this is
        self._held: list[Tensor] | None = None  # a collected g_{step} or e, not yet handed over (flat, host)
        self._held_rho: float | None = None     # the rho of e = rho g / ||g|| in _held; None: _held is g
        self._submitted_at = 0.0
        self._full_batch = 0
        self._trainer_ref: "pl.Trainer | None" = None  # state_dict() gets no trainer argument
        self._worker: AscentWorker | None = None       # the worker the cached value below belongs to
        self._on_cuda = False                          # the main process computes on a GPU
        self._sync_stream = False                      # ... and its stream is synchronized before each post
        self._delivers_step = False                    # the worker delivers e, not g
        self._host_directions: list[tuple[list[Tensor], list[Tensor]]] | None = None  # see synchronize
        self._announced = False
        self.log_step = False  # whether this optimizer step's diagnostics reach the loggers (read by the strategy)
        # The latest diagnostics, as plain attributes: a dict is built only when they are logged.
        self._wait_ms = 0.0
        self._ascent_ms: float | None = None
        self._grad_norm: float | None = None
        self._n = 0.0
        self._cos: float | None = None  # on a logging step only
        self._e_norm: float | None = None  # ||e|| of this step's direction where the worker's ||g|| gives it
        # A fixed b' (int or fraction) for a given b, as computed last: (b' as asked, b, the b' it gave).
        self._sized: tuple[Any, int, int] | None = None
        self.skipped_ascents = 0
        self._skip_warned = False
        self._host: AscentHost | None = None  # the strategy, whose running totals overhead_total_ms reads
        # Synchronized optimizer steps, in all, and (the strategy's added time, that count) at the last
        # log: the window of overhead_ms is the difference, taken on logging steps alone.
        self._synced = 0
        self._window_at = (0.0, 0)
        self._overhead_ms = 0.0
        self.wait_total_ms = 0.0  # waiting for a late worker, in all (not overhead: the worker's pace)

    # ----------------------------------------------------------------- the step boundary
    def synchronize(self, trainer: "pl.Trainer", strategy: AscentHost, worker: AscentWorker, batch: Any,
                    batch_idx: int, step: int | None = None) -> None:
        """Collect ``g_{t-1}``, make it the strategy's direction, and start ``g_t`` (first micro-batch of step t).

        Args:
            trainer: the trainer.
            strategy: the AsyncSAM strategy.
            worker: its running worker.
            batch: this micro-batch as ``training_step`` sees it (used only without a host copy).
            batch_idx: this micro-batch's index in the epoch.
            step: ``trainer.global_step``, where the caller has already read it.
        """
        start = time.perf_counter() if self._tuner is not None else 0.0  # the end of the worker's window
        if step is None:
            step = trainer.global_step
        self.log_step = log_step = logs_now(trainer)
        if self._worker is not worker:
            self._adopt(strategy, worker)
        self._wait_ms = strategy.perturb_ms = 0.0
        # This runs at every step, in the middle of it, where each Python line costs a fraction of a
        # microsecond: the steady state takes the fewest lines, the rare cases a method of their own.
        in_flight = worker.in_flight
        if in_flight == step - 1:  # the steady state: g_{t-1}, started at the previous step
            _, ascent_ms, grad_norm, samples = worker.take() or self._wait_for(strategy, worker)
            self._ascent_ms, self._grad_norm = ascent_ms, grad_norm
            if self._tuner is not None:
                self._after_ascent(strategy, ascent_ms, samples, start)
            if -_INF < grad_norm < _INF:  # finite (math.isfinite's lookup and call cost a microsecond or two, mid-step)
                host = self._host_directions
                if host is not None and self._delivers_step:
                    # What use_gradient(direction, scaled=True) does on the host, without its two frames.
                    strategy.direction, strategy._direction_flats = host[in_flight % 2]
                else:
                    strategy.use_gradient(worker.grads[in_flight % 2], self._delivers_step)
                if log_step:  # e = rho g / (||g|| + EPS): the cosine needs no pass over e for ||e||
                    self._e_norm = strategy.rho * grad_norm / (grad_norm + EPS) if self._delivers_step else None
            else:
                self._skip(strategy)
                strategy.use_gradient(None)
        else:
            self._other_direction(strategy, worker, step)

        current = strategy.cpu_batch
        if current is None:  # the batch never passed through batch_to_device (a custom loop)
            current = batch
        # b is the full batch size, the largest seen (the batch slot measures each batch it takes):
        # a short last batch of an epoch neither rejects nor retunes b'.
        b = self._full_batch or self._measure_batch(current)
        upcoming = strategy.next_step_batch() if strategy.ascent_data == "next" else None
        ascent_batch = current if upcoming is None else upcoming
        sized = self._sized
        n = sized[2] if sized is not None and sized[0] is strategy.ascent_batch_size and sized[1] == b \
            else self._ascent_size(strategy, b)
        strategy.publish(worker)
        if self._sync_stream or not worker.booted:
            self._before_submit(strategy, worker)
        # The next step's own batch is lent where nothing changes it before the worker has read it: no
        # transfer hook of the user's, and either a GPU step (its hooks see the device's copy) or the
        # worker's "read" post, which the trainer takes before this step ends (live weights).
        worker.submit(step, ascent_batch, n, batch_idx,
                      upcoming is not None and strategy.lend_upcoming is True and (self._on_cuda or worker.live))
        slot = worker.slot
        if slot.size > b:
            self._full_batch = slot.size
        self.synced_step = step
        self._synced += 1
        self._n = slot.n
        if self._tuner is not None:  # the start of the worker's window, for "auto"
            self._submitted_at = time.perf_counter()

    def _adopt(self, strategy: AscentHost, worker: AscentWorker) -> None:
        """A new worker (a new fit): where the main process computes, and what the worker delivers."""
        self._worker, self._host = worker, strategy
        self._on_cuda = strategy.root_device.type == "cuda"
        # Where the stream itself posts each step behind its copies (stream_post), nothing waits for the GPU.
        self._sync_stream = self._on_cuda and worker.stream_device is None
        self._delivers_step = worker.delivers_step
        # Beside a CPU trainer, e is the worker's host buffer itself: each buffer's (views, flats), as
        # use_gradient would make them, once per worker.
        self._host_directions = None if self._on_cuda else [g.on_device() for g in worker.grads]

    def _other_direction(self, strategy: AscentHost, worker: AscentWorker, step: int) -> None:
        """The direction where no ``g_{t-1}`` is in flight at step t: none, or one held (a resumed or second fit)."""
        self._e_norm = None
        direction, scaled = None, self._delivers_step
        if worker.in_flight is not None:
            worker.collect()  # stale by more than one step (e.g. a skipped batch): drop it
        elif self._held is not None and self._step == step - 1:
            index = (step - 1) % 2
            worker.grads[index].load_flat(self._held)
            direction = worker.grads[index]
            # Held as e only if this worker makes the same e; otherwise as a direction (both rules are
            # invariant to its scale) that the strategy scales.
            scaled = scaled and self._held_rho == strategy.rho
        self._held = None
        strategy.use_gradient(direction, scaled)

    def _wait_for(self, strategy: AscentHost, worker: AscentWorker) -> AscentResult:
        """The step in flight's result, waited for: the worker's pace, counted as waiting, not as work."""
        wait_start = time.perf_counter()
        result = worker.collect()
        self.waited(strategy, (time.perf_counter() - wait_start) * 1e3)
        return result

    def waited(self, strategy: AscentHost, ms: float) -> None:
        """Count ``ms`` spent waiting for the worker inside the strategy's timed overrides as waiting, not work."""
        self._wait_ms += ms
        self.wait_total_ms += ms
        strategy.added_ms -= ms  # inside the strategy's timed overrides: taken out of its overhead

    def _before_submit(self, strategy: AscentHost, worker: AscentWorker) -> None:
        """On a GPU whose stream cannot post the step, the copies of w_t and e done; at the fit's first submission, the worker's start-up."""
        if self._sync_stream:
            torch.cuda.current_stream(strategy.root_device).synchronize()
        if not worker.booted:  # waiting, not work
            boot_start = time.perf_counter()
            worker.wait_ready()
            self.waited(strategy, (time.perf_counter() - boot_start) * 1e3)

    def _measure_batch(self, batch: Any) -> int:
        self._full_batch = BatchSlot.batch_size(batch)
        return self._full_batch

    def _skip(self, strategy: AscentHost) -> None:
        """A non-finite ``g_{t-1}`` is never applied: the step runs unperturbed, counted and warned about."""
        self.skipped_ascents += 1
        if not self._skip_warned:
            self._skip_warned = True
            rank_zero_warn(
                "AsyncSAM: an ascent gradient was not finite (NaN or inf), so that step ran unperturbed. The "
                "ascent batch holds a non-finite sample that the descent does not see or drops (for example data "
                "that the module's `training_step` filters but its `ascent_loss` does not): check the data, or "
                "filter it in `ascent_loss` too. Skipped ascents are counted in `asyncsam/skipped_ascents`."
            )

    def _ascent_size(self, strategy: AscentHost, b: int) -> int:
        spec = strategy.ascent_batch_size
        if spec == "auto":
            if self._tuner is None or self._tuner.batch_size != b:
                self._tuner = AscentBatchTuner(b)
            return self._tuner.value
        if isinstance(spec, float):
            n = max(1, math.floor(spec * b))
        elif spec > b:  # type: ignore[operator]
            raise ValueError(f"ascent_batch_size={spec!r} is not allowed: it must be <= the batch size b={b}")
        else:
            n = int(spec)  # type: ignore[arg-type]
        self._sized = (spec, b, n)
        return n

    def _after_ascent(self, strategy: AscentHost, ascent_ms: float, samples: int, now: float) -> None:
        """Feed the system-aware b' (``"auto"``) the step's window and the worker's time."""
        if self._tuner is not None and strategy.ascent_batch_size == "auto":
            # From the post (a GPU stream's comes when its copies are done, after the submission) to the collection.
            worker = self._worker
            begin = self._submitted_at if worker is None or worker.stream_device is None else max(
                self._submitted_at, worker.woke())
            window_ms = (now - begin) * 1e3
            if self._tuner.observe(window_ms, ascent_ms, samples) and not self._announced:
                self._announced = True
                rank_zero_info(self._tuner.describe(str(strategy.root_device), strategy.worker_device, strategy.threads))
                advice = self._tuner.advice(strategy.worker_device)
                if advice is not None:
                    rank_zero_warn(advice)

    # ----------------------------------------------------------------- diagnostics
    def after_closure(self, strategy: AscentHost) -> None:
        """On a logging step, the cosine between this step's direction and its descent gradient.

        Called by the strategy's ``optimizer_step`` when the closure (forward, backward, restore)
        has run: where ``on_before_optimizer_step`` would see the gradients, before clipping.
        """
        if not self.log_step:
            return
        direction = strategy.direction
        self._cos = None
        if direction is None:
            return
        grads = [p.grad for p in strategy._params]
        flats = strategy._direction_flats
        if len(flats) == 1:
            # e is one flat buffer: the gradients flattened in one call (torch's C++ flatten: each
            # Python-level reshape costs microseconds mid-step), then two dot products when ||e|| is
            # known, else e and the gradients as the two rows of one matrix and one Gram product.
            e_norm = self._e_norm
            try:
                flat = flatten_dense_tensors(grads if e_norm is not None else [flats[0], *grads])
            except TypeError:  # a parameter without a gradient
                flat = None
            if flat is not None:
                flat = flat.detach()
                self._cos = (known_norm_cosine_similarity(flats[0], flat, e_norm) if e_norm is not None
                             else gram_cosine_similarity(flat.view(2, -1)))
                return
        pairs = [(d, g) for d, g in zip(direction, grads) if g is not None]
        if pairs:
            self._cos = cosine_similarity([d for d, _ in pairs], [g for _, g in pairs]).item()

    def end_step(self, trainer: "pl.Trainer", strategy: AscentHost) -> None:
        """After a logging step's optimizer step: the window's cost per step, and the diagnostics handed to the loggers.

        Called by the strategy's ``optimizer_step`` on the steps that log (:attr:`log_step`) alone,
        once per synchronized optimizer step (a manual ``training_step`` that steps twice ends it
        once), at the step at which Lightning logs its own values of this batch. Other steps
        account for nothing: the strategy's time is a running total, whose difference since the
        last log is the window. The strategy counts the time of this call itself in the next window.
        """
        if self._ended_step == self.synced_step:
            return
        self._ended_step = self.synced_step
        total, steps = strategy.added_total_ms(), self._synced
        since, self._window_at = self._window_at, (total, steps)
        self._overhead_ms = (total - since[0]) / max(1, steps - since[1])
        publish_metrics(trainer, self.metrics)

    @property
    def overhead_total_ms(self) -> float:
        """All the trainer-thread time that AsyncSAM added, in ms, a running total (benchmarks read its differences)."""
        host = self._host
        return host.added_total_ms() if host is not None else 0.0

    @property
    def metrics(self) -> dict[str, float]:
        """The latest ``asyncsam/*`` diagnostics, also on steps that do not log (``overhead_ms``: as last logged)."""
        # Built as floats in one dict: on a logging step each extra pass costs microseconds, mid-step.
        values = {
            "asyncsam/wait_ms": self._wait_ms,
            "asyncsam/ascent_batch_size": float(self._n),
            "asyncsam/overhead_ms": self._overhead_ms,
            "asyncsam/perturb_ms": self._host.perturb_ms if self._host is not None else 0.0,
            "asyncsam/skipped_ascents": float(self.skipped_ascents),
        }
        if self._ascent_ms is not None:
            values["asyncsam/ascent_ms"] = self._ascent_ms
            values["asyncsam/ascent_grad_norm"] = self._grad_norm
        if self._cos is not None and self.log_step:
            values["asyncsam/cos_sim"] = self._cos
        return values

    # ----------------------------------------------------------------- end of training, checkpoints
    def _hold_in_flight(self, trainer: "pl.Trainer") -> None:
        """Wait for the ascent in flight and keep its gradient, so it survives the worker."""
        worker = _strategy(trainer).worker
        if worker is None or worker.in_flight is None:
            return
        result = worker.collect()
        if not math.isfinite(result.grad_norm):  # never carried over: the next step runs unperturbed
            self.skipped_ascents += 1
            return
        self._held = worker.grads[result.step % 2].flat()
        self._held_rho = worker.rho
        self._step = result.step

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.synced_step = self._ended_step = None
        self._skip_warned = False
        if hasattr(trainer.strategy, "added_total_ms"):  # the window starts here, not with a validation before it
            self._host = trainer.strategy  # type: ignore[assignment]
        self._window_at = (self.overhead_total_ms, self._synced)

    @override
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Runs before the strategy closes the worker: a second fit() continues the trajectory.
        self._hold_in_flight(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._trainer_ref is not None:
            self._hold_in_flight(self._trainer_ref)
        if self._held is None:
            return {}
        # "rho": the held buffer is e = rho g / ||g|| (None: the gradient g itself).
        return {"step": self._step, "grads": self._held, "rho": self._held_rho,
                "ascent_batch_size": self._tuner.value if self._tuner else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._step = state_dict.get("step")
        self._held = [g.clone() for g in state_dict.get("grads", [])] or None
        self._held_rho = state_dict.get("rho")
        if self._tuner is not None and state_dict.get("ascent_batch_size"):
            self._tuner.value = int(state_dict["ascent_batch_size"])

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._trainer_ref = trainer

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._trainer_ref = None


_INF = math.inf


def _strategy(trainer: "pl.Trainer") -> AscentHost:
    strategy = trainer.strategy
    if not (hasattr(strategy, "use_gradient") and hasattr(strategy, "worker")):
        raise TypeError(f"AsyncSAMCallback needs AsyncSAMStrategy, the trainer uses {type(strategy).__name__}")
    return strategy  # type: ignore[return-value]
