"""``AsyncSAMCallback``: the per-step synchronization of AsyncSAM, its diagnostics and its state.

:class:`~lightning_asyncsam.strategies.asyncsam.AsyncSAMStrategy` appends this callback to the trainer by
itself; users never add it. At the first micro-batch of optimizer step t it

1. collects ``g_{t-1}`` from the worker (waiting only if it is not ready: strict tau = 1) and
   hands it to the strategy as this step's perturbation direction,
2. publishes ``w_t`` and the ascent batch ``A_t`` to the worker and starts ``g_t``.

It logs ``asyncsam/*`` diagnostics whenever the loggers update (and ``metrics`` holds them every
step), and keeps the stale gradient in the checkpoint, so
that a resumed run continues the trajectory of the uninterrupted one.

It sees the strategy only through :class:`AscentHost`, the attributes it uses, so that this module
does not import :mod:`lightning_asyncsam.strategies` (which imports it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.ascent.autotune import AscentBatchTuner
from lightning_asyncsam.ascent.buffers import BatchSlot, FlatTensors
from lightning_asyncsam.ascent.worker import AscentWorker
from lightning_asyncsam.functional import cosine_similarity


class AscentHost(Protocol):
    """What the callback uses of its strategy (:class:`~lightning_asyncsam.strategies.asyncsam.AsyncSAMStrategy`)."""

    worker: AscentWorker | None
    ascent_batch_size: int | float | str
    ascent_data: str
    ascent_device: str
    cpu_batch: Any
    direction: Sequence[Tensor] | None
    _params: list[Tensor]
    perturb_ms: float

    @property
    def root_device(self) -> torch.device: ...

    @property
    def threads(self) -> int: ...

    def use_gradient(self, grads: FlatTensors | None) -> None: ...

    def next_step_batch(self) -> Any: ...


class AsyncSAMCallback(Callback):
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
        self._synced_step: int | None = None   # optimizer step whose first micro-batch was synchronized
        self._step: int | None = None          # optimizer step whose held gradient this is
        self._held: list[Tensor] | None = None  # a collected g_{step}, not yet handed over (flat, host)
        self._submitted_at = 0.0
        self._metrics: dict[str, float] = {}
        self._full_batch = 0
        self._trainer_ref: "pl.Trainer | None" = None  # state_dict() gets no trainer argument
        self._announced = False

    # ----------------------------------------------------------------- the step boundary
    @override
    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        strategy = _strategy(trainer)
        worker = strategy.worker
        if worker is None:
            return
        step = trainer.global_step
        if self._synced_step == step:
            return  # a later micro-batch of the same optimizer step: same perturbation, no new ascent
        start = time.perf_counter()
        wait_ms = 0.0
        direction = None
        if worker.in_flight is not None:
            if worker.in_flight == step - 1:
                if not worker.ready():
                    wait_start = time.perf_counter()
                    result = worker.collect()
                    wait_ms = (time.perf_counter() - wait_start) * 1e3
                else:
                    result = worker.collect()
                self._after_ascent(strategy, result.ascent_ms, result.grad_norm, result.samples, start)
                direction = worker.grads[(step - 1) % 2]
            else:
                worker.collect()  # stale by more than one step (e.g. a skipped batch): drop it
        elif self._held is not None and self._step == step - 1:
            worker.grads[(step - 1) % 2].load_flat(self._held)
            direction = worker.grads[(step - 1) % 2]
        self._held = None
        strategy.use_gradient(direction)

        ascent_batch = strategy.cpu_batch
        if strategy.ascent_data == "next":
            upcoming = strategy.next_step_batch()
            ascent_batch = upcoming if upcoming is not None else ascent_batch
        if ascent_batch is None:  # the batch never passed through batch_to_device (a custom loop)
            ascent_batch = batch
        # b is the full batch size: a short last batch of an epoch neither rejects nor retunes b'.
        b = max(self._full_batch, BatchSlot.batch_size(strategy.cpu_batch if strategy.cpu_batch is not None else batch))
        self._full_batch = b
        n = min(self._ascent_size(strategy, b), BatchSlot.batch_size(ascent_batch))
        worker.publish()
        if strategy.root_device.type == "cuda":
            torch.cuda.current_stream(strategy.root_device).synchronize()  # w_t and g_{t-1} copies done
        worker.submit(step, ascent_batch, n, batch_idx)
        self._synced_step = step
        self._submitted_at = time.perf_counter()
        self._metrics.update({
            "asyncsam/wait_ms": wait_ms,
            "asyncsam/ascent_batch_size": float(n),
            "asyncsam/overhead_ms": (time.perf_counter() - start) * 1e3 - wait_ms,
        })

    def _ascent_size(self, strategy: AscentHost, b: int) -> int:
        spec = strategy.ascent_batch_size
        if spec == "auto":
            if self._tuner is None or self._tuner.batch_size != b:
                self._tuner = AscentBatchTuner(b)
            return self._tuner.value
        if isinstance(spec, float):
            return max(1, math.floor(spec * b))
        if spec > b:  # type: ignore[operator]
            raise ValueError(f"ascent_batch_size={spec!r} is not allowed: it must be <= the batch size b={b}")
        return int(spec)  # type: ignore[arg-type]

    def _after_ascent(self, strategy: AscentHost, ascent_ms: float, norm: float, samples: int,
                      now: float) -> None:
        window_ms = (now - self._submitted_at) * 1e3
        self._metrics.update({"asyncsam/ascent_ms": ascent_ms, "asyncsam/ascent_grad_norm": norm})
        if self._tuner is not None and strategy.ascent_batch_size == "auto":
            if self._tuner.observe(window_ms, ascent_ms, samples) and not self._announced:
                self._announced = True
                rank_zero_info(self._tuner.describe(str(strategy.root_device), strategy.ascent_device, strategy.threads))
                advice = self._tuner.advice(strategy.ascent_device)
                if advice is not None:
                    rank_zero_warn(advice)

    # ----------------------------------------------------------------- diagnostics
    @override
    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: torch.optim.Optimizer) -> None:
        strategy = _strategy(trainer)
        direction = strategy.direction
        if direction is None or not _logs_now(trainer):
            return
        pairs = [(d, p.grad) for d, p in zip(direction, strategy._params) if p.grad is not None]
        if pairs:
            cos = cosine_similarity([d for d, _ in pairs], [g for _, g in pairs])
            self._metrics["asyncsam/cos_sim"] = cos  # type: ignore[assignment]  # a tensor: no device sync here

    @override
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        strategy = _strategy(trainer)
        self._metrics["asyncsam/perturb_ms"] = strategy.perturb_ms
        strategy.perturb_ms = 0.0
        if _logs_now(trainer):
            pl_module.log_dict(self._metrics, on_step=True, on_epoch=False, batch_size=1)

    @property
    def metrics(self) -> dict[str, float]:
        """The latest step's ``asyncsam/*`` diagnostics, also on steps that do not log them."""
        return {k: float(v) for k, v in self._metrics.items()}

    # ----------------------------------------------------------------- end of training, checkpoints
    def _hold_in_flight(self, trainer: "pl.Trainer") -> None:
        """Wait for the ascent in flight and keep its gradient, so it survives the worker."""
        worker = _strategy(trainer).worker
        if worker is None or worker.in_flight is None:
            return
        result = worker.collect()
        self._held = worker.grads[result.step % 2].flat()
        self._step = result.step

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._synced_step = None

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
        return {"step": self._step, "grads": self._held, "ascent_batch_size": self._tuner.value if self._tuner else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._step = state_dict.get("step")
        self._held = [g.clone() for g in state_dict.get("grads", [])] or None
        if self._tuner is not None and state_dict.get("ascent_batch_size"):
            self._tuner.value = int(state_dict["ascent_batch_size"])

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._trainer_ref = trainer

    @override
    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._trainer_ref = None


def _logs_now(trainer: "pl.Trainer") -> bool:
    """Whether this step's diagnostics reach the loggers.

    Lightning's ``log`` costs about a millisecond per call, and the cosine a pass over the
    gradients; on short steps neither is free. Loggers only receive values every
    ``log_every_n_steps`` anyway, so we compute and log exactly then (every step with
    ``log_every_n_steps=1``), and at the end of each epoch so that ``trainer.callback_metrics``
    always holds recent values.
    """
    last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return bool(trainer._logger_connector.should_update_logs or last or trainer.fast_dev_run)


def _strategy(trainer: "pl.Trainer") -> AscentHost:
    strategy = trainer.strategy
    if not (hasattr(strategy, "use_gradient") and hasattr(strategy, "worker")):
        raise TypeError(f"AsyncSAMCallback needs AsyncSAMStrategy, the trainer uses {type(strategy).__name__}")
    return strategy  # type: ignore[return-value]
