"""``AsyncSAMStrategy``: AsyncSAM (Algorithm 1 of Jo, Lim, Lee), the ascent in a worker process.

The strategy owns the worker's lifecycle, the data the worker sees and the perturbation; the
:class:`~lightning_asyncsam.ascent.callback.AsyncSAMCallback` that it adds to the trainer
synchronizes the worker with the training loop.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

import lightning.pytorch as pl
from lightning_asyncsam.ascent.affinity import ProcessAffinity, available_cores, split_cores
from lightning_asyncsam.ascent.buffers import FlatTensors
from lightning_asyncsam.ascent.callback import AsyncSAMCallback
from lightning_asyncsam.ascent.devices import resolve_ascent_device
from lightning_asyncsam.ascent.flat_params import FlatParameters
from lightning_asyncsam.ascent.lookahead import LookaheadLoader
from lightning_asyncsam.ascent.memory_format import MEMORY_FORMATS, MemoryFormat, replica_format
from lightning_asyncsam.ascent.worker import AscentWorker
from lightning_asyncsam.functional import adaptive_ascent_step_, climb_, restore_, scale_to_radius_
from lightning_asyncsam.logging_steps import optimizer_step_counter
from lightning_asyncsam.strategies.base import SharpnessAwareStrategy
from lightning_asyncsam.strategies.registry import _register

AscentData = Literal["previous", "next"]


class AsyncSAMStrategy(SharpnessAwareStrategy):
    """AsyncSAM (Algorithm 1): the ascent gradient comes one step stale from a worker process.

    At step t the worker computes ``g_t = grad L(w_t; A_t)`` on the first b' samples of a batch
    while the main process descends at ``w_t + rho * g_{t-1} / ||g_{t-1}||`` (Eq. 3, tau = 1).
    Step 0 is not perturbed. The main process waits for ``g_{t-1}`` only if it is not ready yet
    and logs that wait as ``asyncsam/wait_ms``.

    Args:
        rho: the perturbation radius r of Eq. 3.
        ascent_batch_size: b'. An int in [1, b], a float fraction of b in (0, 1], or ``"auto"``
            (the system-aware rule of Section 3.3, see :mod:`lightning_asyncsam.ascent.autotune`).
        ascent_device: where the worker computes: ``"auto"`` (the default: a visible GPU that no
            rank of this trainer uses, else the CPU; see :mod:`lightning_asyncsam.ascent.devices`),
            ``"cpu"``, or a CUDA device such as ``"cuda:1"``. :attr:`worker_device` says which.
        ascent_threads: torch threads in the worker. None: the cores of this node divided among
            its ranks, minus one for a GPU-driving main process, or half of them when the main
            process also computes on the CPU.
        ascent_data: ``"next"`` (the default: A_t comes from the first micro-batch of step t+1,
            read one step ahead, so the perturbation at step t+1 was computed on the batch that
            step t+1 descends on, as in SAM) or ``"previous"`` (the paper's exact Algorithm 1: A_t
            is the first b' samples of B_t). On digits with label noise "next" kept SAM's whole
            gain over SGD and "previous" almost none, at the same speed (see the README).
        ascent_nice: how far the worker lowers its scheduling priority, 0 to 19 (POSIX ``nice``).
            The default 10 lets the main process, the critical path, win any contention for cores.
        ascent_cpus: the cores the worker runs on (Linux); the trainer's process keeps the rest of
            its cores while the worker lives, so the two never share one. None (the default): no
            pinning. ``"auto"``: split this rank's share of the cores when the main process computes
            on the CPU too (the worker takes ``ascent_threads`` of them); beside a GPU, where the
            main process's cores also serve its data-loader workers, pin nothing. A list of core
            ids pins the worker there in any case.
        ascent_memory_format: the layout of the worker's replica's convolution weights, which only
            its speed sees (the values match up to rounding): ``"auto"`` (the default:
            ``channels_last`` on a CPU worker when the module has 4-D parameters, 7-23% less of the
            worker's forward and backward on this project's conv nets, and the module's own layout
            wherever its code fails so; see :mod:`lightning_asyncsam.ascent.memory_format`),
            ``"channels_last"`` on any device, failing where the module cannot run so, or
            ``"preserve"`` (the module's layout).
        adaptive: ASAM's rule (Kwon et al., 2021) on the stale gradient: e = rho T^2 g / ||T g||
            with g = g_{t-1} and T = |w_t| + eta for the parameters whose name ends in ``weight``,
            1 for the others.
        eta: ASAM's offset in T (used with ``adaptive=True``).
        **kwargs: see :class:`SharpnessAwareStrategy`.

    Example::

        >>> import lightning as L
        >>> strategy = AsyncSAMStrategy(rho=0.05, ascent_batch_size=0.25, ascent_threads=1)
        >>> trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=1, logger=False,
        ...                     enable_progress_bar=False, enable_checkpointing=False)
        >>> trainer.strategy.ascent_data
        'next'
    """

    strategy_name = "asyncsam"

    def __init__(
        self,
        rho: float = 0.05,
        ascent_batch_size: int | float | str = "auto",
        ascent_device: str | torch.device = "auto",
        ascent_threads: int | None = None,
        ascent_data: AscentData = "next",
        ascent_nice: int = 10,
        ascent_cpus: Sequence[int] | Literal["auto"] | None = None,
        ascent_memory_format: MemoryFormat = "auto",
        adaptive: bool = False,
        eta: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(rho=rho, **kwargs)
        self.ascent_batch_size = _check_ascent_batch_size(ascent_batch_size)
        self.ascent_device = _check_ascent_device(ascent_device)
        self.worker_device = "cpu" if self.ascent_device == "auto" else self.ascent_device  # resolved in setup
        if ascent_threads is not None and (isinstance(ascent_threads, bool) or not isinstance(ascent_threads, int)
                                           or ascent_threads < 1):
            raise ValueError(f"ascent_threads={ascent_threads!r} is not allowed: use None or an int >= 1")
        self.ascent_threads = ascent_threads
        if ascent_data not in ("previous", "next"):
            raise ValueError(f"ascent_data={ascent_data!r} is not allowed: use 'previous' (the paper's "
                             "Algorithm 1) or 'next' (the default)")
        self.ascent_data: AscentData = ascent_data
        if isinstance(ascent_nice, bool) or not isinstance(ascent_nice, int) or not 0 <= ascent_nice <= 19:
            raise ValueError(f"ascent_nice={ascent_nice!r} is not allowed: use an int from 0 to 19")
        self.ascent_nice = ascent_nice
        self.ascent_cpus = _check_ascent_cpus(ascent_cpus)
        if ascent_memory_format not in MEMORY_FORMATS:
            raise ValueError(f"ascent_memory_format={ascent_memory_format!r} is not allowed: use 'auto', "
                             "'channels_last' or 'preserve'")
        self.ascent_memory_format: MemoryFormat = ascent_memory_format
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive={adaptive!r} is not allowed: use True (ASAM's rule) or False")
        self.adaptive = adaptive
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta={eta!r} is not allowed: ASAM's offset must be a finite number >= 0")
        self.eta = float(eta)
        self._adaptive_flags: list[bool] = []  # per trainable parameter: does T = |w| + eta apply?
        self._affinity = ProcessAffinity()
        self.worker: AscentWorker | None = None
        self.direction: Sequence[Tensor] | None = None  # this step's e = rho * g_{t-1} / ||g_{t-1}||
        self.cpu_batch: Any = None
        self.lookahead: LookaheadLoader | None = None
        self._sync: AsyncSAMCallback | None = None
        self._plain_transfer: bool | None = None  # the host batch needs no hook before the transfer
        # No batch-transfer hook of the user's runs on the next step's batch (None: not known yet), so
        # none can change it under the worker's read: it may be lent (see next_step_batch).
        self.lend_upcoming: bool | None = None
        self._step_counter: Callable[[], int] | None = None  # trainer.global_step, see optimizer_step_counter
        self._published: list[Tensor] | None = None  # w_t as published this optimizer step (see publish), else None
        self._flat: FlatParameters | None = None     # the trainable parameters in one buffer per dtype, during a fit
        self._direction_flats: list[Tensor] = []     # e as one flat per dtype (what self.direction's views alias)
        self._targets: list[Tensor] = []             # what perturb and restore write: the flats, or the parameters
        # The worker whose buffers _published_views are views of: flat ones (with _write_published), or
        # one view per parameter.
        self._published_by: AscentWorker | None = None
        self._published_views_of: AscentWorker | None = None
        self._published_views: list[Tensor] = []
        self._write_published: Callable[[], object] = _nothing
        # Live weights (the worker reads w_t from self._flat's buffers): the worker's "read" post,
        # to take before anything writes them after a submission (see publish); None: not live.
        self._read_signal: Callable[[bool], bool] | None = None
        self._reading: Callable[[bool], bool] | None = None  # the post still to take this step

    @property
    def threads(self) -> int:
        """The worker's torch threads (resolving ``ascent_threads=None``)."""
        if self.ascent_threads is not None:
            return self.ascent_threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS
            cores = os.cpu_count() or 1
        per_rank = max(1, cores // max(1, self.num_processes))
        return max(1, per_rank // 2) if self.root_device.type == "cpu" else max(1, per_rank - 1)

    # ----------------------------------------------------------------- worker lifecycle
    @override
    def connect(self, model: "pl.LightningModule") -> None:
        super().connect(model)
        trainer = model._trainer
        if trainer is not None:
            found = [c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback)]
            if not found:
                found = [AsyncSAMCallback()]
                trainer.callbacks.append(found[0])
            self._sync = found[0]

    @override
    def setup(self, trainer: "pl.Trainer") -> None:
        super().setup(trainer)
        if trainer.state.fn == TrainerFn.FITTING:
            self._check_loss_source()
            self._plain_transfer = self.lend_upcoming = None
            self._step_counter = None  # made at this fit's first step
            self._lay_out_params()

    def _lay_out_params(self) -> None:
        """The trainable parameters into flat buffers, and this rank's worker for them (each fit, and as the set grows)."""
        self.close_worker()  # while the old flat buffers still hold w_t's backup
        self._adaptive_flags = self._asam_flags()
        self._release_flat()
        # On the CPU the buffers get twins: perturb writes w + e there and swaps, restore swaps back
        # (no pass over the weights). On a GPU the restore stays a copy: nothing there was measured.
        self._flat = FlatParameters(self._params, twins=self.root_device.type == "cpu")
        self._start_worker()

    def _start_worker(self) -> None:
        """Spawn this rank's worker early: it boots during the sanity check and the unperturbed step 0."""
        self.close_worker()
        module = self.lightning_module
        assert module is not None
        visible = torch.cuda.device_count()
        used = [d.index or 0 for d in (self.parallel_devices or [self.root_device]) if d.type == "cuda"]
        self.worker_device = resolve_ascent_device(self.ascent_device, self.root_device, used, visible, self.local_rank)
        device = torch.device(self.worker_device)
        if device.type == "cuda" and device.index is not None and device.index >= visible:
            raise ValueError(
                f"ascent_device={self.ascent_device!r} is not allowed: this machine has {visible} CUDA device(s)"
            )
        main_cores, worker_cores = self._core_split()
        # ASAM's T comes from w_t, which does not exist yet when the worker finishes g_{t-1}: it scales here.
        self.worker = AscentWorker(module, self._params, self.worker_device, self.threads, capacity=1,
                                   nice=self.ascent_nice, cpus=worker_cores, rho=None if self.adaptive else self.rho,
                                   memory_format=replica_format(self.ascent_memory_format, device, module))
        flat = self._flat
        # With twins the perturbed step never writes w_t's buffers, so the worker can read w_t in place
        # once they are in shared memory. They move there after the worker's own buffers, which it
        # cannot do without; where there is no room left, w_t is published as before.
        if flat is not None and flat.twins and flat.share():
            self.worker.read_live(flat.flats)
        if self.root_device.type == "cuda":
            self.worker.weights.pin(self.root_device)
            first, second = self.worker.grads
            first.pin(self.root_device)
            second.pin(self.root_device, share_with=first)  # one device copy of the direction
        self.worker.start()
        if self.root_device.type == "cuda":  # the stream posts each step behind its copies: no wait for the GPU
            self.worker.post_on_stream(self.root_device)
        if main_cores:
            self._affinity.confine(main_cores)

    @override
    def _adopt_trainable(self, new: list[Tensor]) -> None:
        # AsyncSAM's rule keeps no per-parameter state: the worker restarts with the new set (the
        # gradient in flight, of the old set, is dropped, so this step runs unperturbed).
        self.close_worker()
        self._collect_params()
        self._lay_out_params()
        rank_zero_info(f"AsyncSAM: the optimizers now train {len(new)} more parameter(s) (added mid-fit); the ascent "
                       "worker restarted with them, and this step runs unperturbed.")

    def _core_split(self) -> tuple[list[int] | None, list[int] | None]:
        """(the trainer's cores, the worker's cores) while the worker lives; None: unpinned."""
        if self.ascent_cpus is None:
            return None, None
        cores = available_cores()
        if cores is None:  # no affinity API on this OS
            if self.ascent_cpus == "auto":
                return None, None
            raise ValueError(f"ascent_cpus={self.ascent_cpus!r} is not allowed: this OS cannot pin processes; use None")
        if self.ascent_cpus == "auto":
            both_on_cpu = self.root_device.type == "cpu" and torch.device(self.worker_device).type == "cpu"
            split = split_cores(cores, self.local_rank, self.num_processes, self.threads) if both_on_cpu else None
            return split if split is not None else (None, None)
        wanted = list(self.ascent_cpus)
        rest = [c for c in cores if c not in wanted]
        if any(c not in cores for c in wanted) or not rest:
            raise ValueError(
                f"ascent_cpus={wanted!r} is not allowed: use core ids among {cores}, leaving at least one "
                "for the trainer"
            )
        return rest, wanted

    def close_worker(self) -> None:
        """Stop the worker and give the trainer its cores back (safe to call at any time, any number of times)."""
        self._reading = None  # nothing waits for a worker that stops (it has stopped reading once close() returns)
        self._restore()  # while w_t's published copy, the backup, still exists
        worker, self.worker = self.worker, None
        self.direction = None
        self._published = None
        self._published_by = self._published_views_of = None  # nothing keeps the closed worker's buffers
        self._published_views = []
        self._write_published = _nothing
        self._read_signal = None
        self._affinity.restore()
        if worker is not None:
            worker.close()

    @override
    def on_train_end(self) -> None:
        self.close_worker()
        super().on_train_end()

    @override
    def on_exception(self, exception: BaseException) -> None:
        self.close_worker()
        super().on_exception(exception)

    @override
    def teardown(self) -> None:
        self.close_worker()
        self._release_flat()  # before the base moves the module off the GPU
        self.cpu_batch = None
        self._retire_lookahead()
        super().teardown()

    def _release_flat(self) -> None:
        flat, self._flat = self._flat, None
        if flat is not None:
            flat.release()

    # ----------------------------------------------------------------- data for the worker
    @override
    def batch_to_device(self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0) -> Any:
        start = time.perf_counter()
        trainer = getattr(self._lightning_module, "_trainer", None)
        # `is`, not `trainer.training`: that compares string enums, case-insensitively, on every batch.
        if trainer is not None and trainer.state.stage is RunningStage.TRAINING:
            # Still on the host: the worker's slice costs no device-to-host copy.
            self.cpu_batch = batch
        self.added_ms += (time.perf_counter() - start) * 1e3
        return super().batch_to_device(batch, device, dataloader_idx)

    @override
    def process_dataloader(self, dataloader: object) -> object:
        module = self.lightning_module
        trainer = module._trainer if module is not None else None
        if self.ascent_data == "next" and trainer is not None and trainer.training:
            self._retire_lookahead()
            self.lookahead = LookaheadLoader(dataloader, depth=trainer.accumulate_grad_batches)  # type: ignore[arg-type]
            return self.lookahead
        return dataloader

    def _retire_lookahead(self) -> None:
        """Drop the lookahead, its time kept in :attr:`added_ms` (a running total, see :meth:`added_total_ms`)."""
        lookahead, self.lookahead = self.lookahead, None
        if lookahead is not None:
            self.added_ms += lookahead.take_added_ms()

    def next_step_batch(self) -> Any:
        """The first micro-batch of the next optimizer step, as the training loop will see it on the host.

        None at the last step of an epoch (see :mod:`lightning_asyncsam.ascent.lookahead`). Where
        :attr:`lend_upcoming`, no transfer hook of the user's sees it (it is the loop's own batch, or
        its precision cast, which makes new tensors), so the worker may read it in place (see
        :mod:`lightning_asyncsam.ascent.lent_batch` for the other conditions).
        """
        lookahead = self.lookahead
        if lookahead is None:
            return None
        trainer = self._lightning_module._trainer  # type: ignore[union-attr]
        k = trainer.accumulate_grad_batches  # type: ignore[union-attr]
        upcoming = lookahead.upcoming  # lookahead.peek(k), without its frame: this runs at every step
        if k > len(upcoming):
            return None
        if self._plain_transfer:  # what the loop would do to it is the identity: skip the hook calls
            return upcoming[k - 1]
        return self._as_transferred(trainer, upcoming[k - 1])  # type: ignore[arg-type]

    def _as_transferred(self, trainer: "pl.Trainer", raw: Any) -> Any:
        """``raw`` as the training loop will hand it to ``batch_to_device`` (its precision cast and transfer hook)."""
        if self._plain_transfer is None:
            self._plain_transfer = _plain_transfer(trainer)
            self.lend_upcoming = _no_transfer_hooks(trainer)
            if self._plain_transfer:
                return raw
        batch = trainer.precision_plugin.convert_input(raw)
        return self._lightning_module._on_before_batch_transfer(batch, dataloader_idx=0)  # type: ignore[union-attr]

    def added_total_ms(self) -> float:
        """All the trainer-thread time, in ms, that the strategy has added (its lookaheads' included): a running total.

        Read on logging steps alone (the callback's window is a difference of two readings), so
        that no step pays for an account of its own.
        """
        lookahead = self.lookahead
        return self.added_ms + (lookahead.timer[0] if lookahead is not None else 0.0)

    # ----------------------------------------------------------------- the perturbation
    def use_gradient(self, grads: FlatTensors | None, scaled: bool = False) -> None:
        """Make ``g_{t-1}`` (a host buffer from the worker) this step's perturbation e; None: no perturbation.

        e moves to the main device in one copy per dtype; every micro-batch of the step adds it,
        with no allocation and no second pass over the weights per micro-batch.

        Args:
            grads: ``g_{t-1}``, or e itself, or None.
            scaled: the worker already scaled it to ``e = rho * g / ||g||`` (Eq. 3; it does so
                without ``adaptive``), so the trainer's thread does nothing but the transfer.
                Otherwise the scale is formed here: ASAM's rule (T from ``w_t``), or a gradient
                held from a checkpoint of an older version.
        """
        if grads is None:
            self.direction = None
            return
        direction, self._direction_flats = grads.on_device()
        if not scaled and self.adaptive:
            adaptive_ascent_step_(direction, self._params, self._adaptive_flags, self.rho, self.eta)
        elif not scaled:
            scale_to_radius_(direction, self.rho, storage=self._direction_flats)
        self.direction = direction

    def publish(self, worker: AscentWorker) -> None:
        """Publish ``w_t`` to the worker; until the optimizer steps, that copy is also perturb's backup.

        With the parameters in flat buffers (:mod:`lightning_asyncsam.ascent.flat_params`), the
        publication, each perturbation and each restore are one operation per dtype; on the CPU,
        where the buffers have twins, the restore is a swap of memory and needs no backup, and the
        worker reads ``w_t`` from the buffers themselves ("live weights": nothing is copied). Then
        nothing may write them before the worker has read them: the restore, which precedes any
        update, takes the worker's post first (:meth:`_restore`), and on a step left unperturbed
        the end of its closure does (:meth:`_after_closure`).
        """
        if self._reading is not None:  # the last step's read was never taken (a step without restore)
            self._await_read()
        flat = self._flat
        if flat is not None and flat.anchor_ptr() == flat.first:  # flat.intact(), without its frame
            if self._published_by is not worker:  # the same buffers every step: the views and the writer made once
                self._published_by, self._published_views_of = worker, None
                self._published_views = worker.published_flats()  # with live weights, never written
                self._write_published = worker.flat_publisher(flat.flats)  # live: the rest alone, if any
                self._read_signal = worker.read_signal()
            self._write_published()
            self._targets = flat.flats
            self._reading = self._read_signal
        else:
            self._read_signal = None  # the worker reads the published copy from now on
            worker.publish()
            if self._published_views_of is not worker:  # views of the same buffers every step
                self._published_by, self._published_views_of = None, worker
                self._published_views = worker.published_params()
            self._targets = self._params
        self._published = self._published_views

    @override
    def _perturb(self, step: Sequence[Tensor]) -> None:
        if self._published is None:  # no w_t published this step (e.g. a custom loop): the base's copy
            super()._perturb(step)
            return
        start = time.perf_counter()
        targets = self._targets
        if targets is not self._params:
            flat = self._flat
            if flat is not None and flat.twins:
                # w + e into the twins, which the parameters then take (restore: the swap back). The
                # buffers that hold w_t are not written until then: the worker may still be reading them.
                if not flat.swapped:  # (swapped: never left so before a perturbation, see training_step)
                    for w, e, twin in zip(targets, self._direction_flats, flat.twins):
                        torch.add(w, e, out=twin)
                    flat.swap()
                    flat.swapped = True
            else:
                # climb_ on the flat buffers (which never require grad), one method call per dtype, looped in C.
                list(map(Tensor.add_, targets, self._direction_flats))
        else:
            with torch.no_grad():
                climb_(targets, step)
        self._perturbed = True
        self.perturb_ms += (time.perf_counter() - start) * 1e3

    @override
    def _restore(self) -> None:
        if not self._perturbed:
            return
        flat = self._flat
        if flat is not None and flat.swapped:  # w_t is the twin's memory, untouched: trade it back
            start = time.perf_counter()
            flat.swap()
            flat.swapped = False
            self._perturbed = False
            reading = self._reading
            if reading is not None:  # live weights: the update that follows writes w_t's buffers
                self._reading = None
                if not reading(False):  # (the worker read them long ago, unless it is starved)
                    start += self._await_read()
            self.perturb_ms += (time.perf_counter() - start) * 1e3
            return
        if self._published is None:
            super()._restore()  # the base's own backup
            return
        start = time.perf_counter()
        targets = self._targets
        if targets is not self._params:
            # restore_ on the flat buffers: w_t back from the copy the worker reads, one call per dtype, looped in C.
            list(map(Tensor.copy_, targets, self._published))
        else:
            with torch.no_grad():
                restore_(targets, self._published)
        self._perturbed = False
        self.perturb_ms += (time.perf_counter() - start) * 1e3

    @override
    def _after_closure(self) -> None:
        if self._reading is not None:  # an unperturbed step (see _ascent_step): the update comes next
            self._await_read()
        sync = self._sync
        if sync is not None:
            sync.after_closure(self)

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any],
                       model: "pl.LightningModule | torch.nn.Module | None" = None, **kwargs: Any) -> Any:
        out = super().optimizer_step(optimizer, closure, model, **kwargs)
        self._published = None  # the weights moved on: no longer w_t
        sync = self._sync
        if sync is not None and sync.log_step:  # the diagnostics' hand-over; other steps end here
            start = time.perf_counter()
            sync.end_step(self._lightning_module._trainer, self)  # type: ignore[union-attr]
            self.added_ms += (time.perf_counter() - start) * 1e3  # end_step's own share: in the next window
        return out

    @override
    def _ascent_step(self, batch: Any, batch_idx: int) -> Sequence[Tensor] | None:
        worker, sync = self.worker, self._sync
        if worker is not None and sync is not None:
            trainer = self._lightning_module._trainer  # type: ignore[union-attr]
            step = (self._step_counter or self._make_step_counter(trainer))()  # trainer.global_step
            if sync.synced_step != step:  # the first micro-batch of this optimizer step
                sync.synchronize(trainer, self, worker, batch, batch_idx, step)
                # The diagnostics, on a logging step; the worker's read of w_t, on a step that no
                # restore will end (unperturbed: the fit's first, a skipped ascent), before its update.
                self._after_closure_due = sync.log_step or (self.direction is None and self._reading is not None)
        return self.direction

    def _await_read(self) -> float:
        """Wait until the worker has read ``w_t`` from the live buffers; the wait, in seconds, counts as waiting."""
        self._reading = None
        worker = self.worker
        if worker is None:
            return 0.0
        start = time.perf_counter()
        worker.await_read()
        waited = time.perf_counter() - start
        sync = self._sync
        if sync is not None:
            sync.waited(self, waited * 1e3)
        return waited

    def _make_step_counter(self, trainer: "pl.Trainer") -> Callable[[], int]:
        self._step_counter = optimizer_step_counter(trainer, self._manual)
        return self._step_counter

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, cls, "asyncsam", "AsyncSAM: SAM with a one-step-stale ascent in a worker process")


def _nothing() -> None:
    """No worker, nothing to publish."""


def _plain_transfer(trainer: "pl.Trainer") -> bool:
    """Whether the training loop hands ``batch_to_device`` its batches unchanged (no precision cast, no hook)."""
    from lightning.pytorch.plugins.precision import Precision

    if type(trainer.precision_plugin).convert_input is not Precision.convert_input:
        return False
    return _no_transfer_hooks(trainer, ("on_before_batch_transfer",))


def _no_transfer_hooks(trainer: "pl.Trainer", hooks: Sequence[str] = (
        "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")) -> bool:
    """Whether none of ``hooks`` is the user's own (on the module or the datamodule that Lightning calls it on).

    A user's hook may change a batch in place (on a CPU trainer, ``on_after_batch_transfer`` gets the
    host batch itself); Lightning's own never do.
    """
    from lightning.pytorch.core.hooks import DataHooks

    selector = trainer._data_connector._datahook_selector
    for hook in hooks:
        owner = selector.get_instance(hook) if selector is not None else trainer.lightning_module
        if getattr(type(owner), hook, None) is not getattr(DataHooks, hook):
            return False
    return True


def _check_ascent_cpus(value: object) -> list[int] | Literal["auto"] | None:
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    if (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value)):
        return sorted(set(value))
    raise ValueError(f"ascent_cpus={value!r} is not allowed: use 'auto', None, or a non-empty list of core ids")


def _check_ascent_batch_size(value: int | float | str) -> int | float | str:
    if value == "auto":
        return value
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if value >= 1:
            return value
    elif isinstance(value, float):
        if 0.0 < value <= 1.0:
            return value
    raise ValueError(
        f"ascent_batch_size={value!r} is not allowed: use 'auto', an int b' with 1 <= b' <= b, "
        "or a float fraction of b in (0, 1]"
    )


def _check_ascent_device(value: str | torch.device) -> str:
    if value == "auto":
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"ascent_device={value!r} is not allowed: use 'auto', 'cpu' or a CUDA device such as 'cuda:1'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"ascent_device={value!r} is not allowed: CUDA is not available on this machine; use 'cpu'")
    return str(device)


__all__ = ["AsyncSAMStrategy"]
