"""The ascent worker: a separate OS process that computes AsyncSAM's stale ascent gradient.

This module is the trainer's side (:class:`AscentWorker`) and the contract that both sides keep;
the process's own side, its entry point and how the module reaches it, is
:mod:`lightning_asyncsam.ascent.worker_process`.

The contract, which the tests check:

1. It is started with ``fork`` where that is provably safe, and with ``spawn`` otherwise
   (:mod:`lightning_asyncsam.ascent.launch` argues it from PyTorch's and oneDNN's sources).
   Fork needs Linux, a CPU ascent device, exactly one torch thread in the worker (so that it
   never enters an OpenMP region, which libgomp cannot run after a fork), no accelerator visible
   and no autograd device thread running. A forked worker pays no imports: on this project's
   2-core machine it is ready in tens of milliseconds, where a spawned one takes seconds (see
   ``benchmarks/startup.py``). It resets the parent's signal handlers, keeps the parent's objects
   out of its garbage collector, and ends with ``os._exit``: no handler, finalizer or ``atexit``
   hook of the trainer ever runs in it. A spawned worker inherits no CUDA context, no locks and
   no threads, and does not re-run the user's ``__main__`` (scripts need no ``__main__`` guard).
   :attr:`AscentWorker.start_method` says which one was used.
2. It receives only picklable things: the module serialized to bytes with ``cloudpickle``,
   shared-memory buffers, and plain settings; under ``fork`` too, so that the replica is always a
   detached copy with no trainer and no hooks. Classes that a fresh interpreter could not import
   by name travel by value: those of a notebook's or script's ``__main__``, of ``__mp_main__`` (a
   script inside a rank of the ``spawn`` launcher) and of modules without an import spec. It
   loads the module with ``map_location=ascent_device``, so it never creates a CUDA context
   unless ``ascent_device`` is a CUDA device.
3. The replica sees a read-only stand-in for the trainer
   (:class:`~lightning_asyncsam.ascent.replica.TrainerStandIn`): ``self.current_epoch``,
   ``self.global_step``, ``self.trainer.max_epochs``, ``max_steps``,
   ``estimated_stepping_batches``, the optimizers' ``param_groups`` hyperparameters (the current
   learning rate) and the other scalars a training step reads. What a fit never changes travels
   once, at the first step; afterwards only the epoch and hyperparameters that changed (numbers that
   change alone, a new epoch's or a per-step scheduler's, through shared memory with no message:
   :mod:`lightning_asyncsam.ascent.hyperparameters`), and the global step is the step number
   itself. Anything else
   raises an ``AttributeError`` that names it and points to ``ascent_loss(self, batch)``.
   ``self.log`` and ``self.log_dict`` do nothing in the replica: the trainer logs the real step.
4. A module compiled with ``torch.compile`` travels uncompiled with its compile context (backend,
   mode, options), and the replica compiles its ``forward``, ``training_step`` and
   ``ascent_loss`` the same way on its own device. Compilation is lazy, so the first ascent step
   pays it, while the trainer compiles its own step. Measured on this project's loaded 2-core
   machine for a tiny MLP: the first ascent took 0.57 s with ``backend="eager"`` and 11 s with the
   default inductor backend (its on-disk cache already warm), against 7 ms uncompiled; later
   steps cost the same as uncompiled ones.
5. It never outlives its trainer: it polls its parent every half second and exits when the
   parent is gone; :meth:`AscentWorker.close` stops it, then terminates and kills it if needed.
6. A crash on either side surfaces within seconds: the worker sends its traceback before it
   exits, and the main process checks the worker's liveness while it waits, raising
   :class:`AscentWorkerError` that names the worker, its pid and its exit code. Nothing waits
   without a liveness check, so nothing hangs.
7. It yields the CPU to the trainer: it lowers its own scheduling priority (``nice``, 10 by
   default). The main process is the critical path; the worker has slack by design (b' is sized
   to finish inside the descent step), so when the cores are oversubscribed (data-loader
   workers, the OS, other jobs) it is the worker that waits, and "auto" shrinks b' if it must.
   Given cores (``cpus``), it runs on those alone (see :mod:`lightning_asyncsam.ascent.affinity`).

Per step nothing crosses the pipe: five numbers cross to the worker and five back through shared
memory, signalled by two semaphores, and a third where the worker reads the live weights
(:mod:`lightning_asyncsam.ascent.mailbox`), and the tensors move through shared
buffers (:mod:`lightning_asyncsam.ascent.buffers`), or, for the next step's batch, straight from the
trainer's memory (:mod:`lightning_asyncsam.ascent.lent_batch`), as do the numbers of a scheduler's step
(:mod:`lightning_asyncsam.ascent.hyperparameters`). The pipe carries what is rare: the batch's
layout when it changes, a batch's new non-tensor leaves where they exceed a 64 KB shared buffer
(:mod:`lightning_asyncsam.ascent.shared_object`), the trainer stand-in's other changes (a new param
group or key, a flag), the module's train/eval modes where an epoch starts with others (a frozen
batch norm, with its running statistics: :mod:`lightning_asyncsam.ascent.mirror`), the switch from
the live weights to the published copy (the trainer's parameters moved out of their buffers, by
``module.to()``), a stop, an error's traceback.

Per-step budget. At the first micro-batch of each optimizer step, the trainer's thread does a
fixed amount of work, whatever the model's size, with no system call in the common case: one
``sem_trywait`` and four numbers read (:meth:`AscentWorker.take`; the worker has already scaled
``g_{t-1}`` into e, so the direction costs nothing but a host-to-device copy on a GPU; ASAM's rule,
whose T needs ``w_t``, adds its foreach passes); on a CPU no copy of ``w_t`` at all: the trainable
parameters live in one flat buffer per dtype during the fit (:mod:`lightning_asyncsam.ascent.flat_params`),
in shared memory, and the worker reads ``w_t`` there ("live weights", :meth:`AscentWorker.read_live`;
where shared memory has no room for them, the trainer publishes ``w_t`` as on a GPU); the perturbed
forward and backward run on the buffers' twins, so nothing writes ``w_t``'s memory before the
restore, which takes the worker's "read" post (one ``sem_trywait``) before the update may write
it (:mod:`lightning_asyncsam.ascent.mailbox`); on a GPU one copy per dtype publishes ``w_t``
(torch's batch and instance norms' running statistics,
which a training-mode forward never reads, are not mirrored, :mod:`lightning_asyncsam.ascent.mirror`;
the other mirrored tensors, frozen parameters and buffers, cross only when they changed: a frozen
backbone costs two C-level passes over its tensors' version counters and addresses, not its size,
``FlatTensors.flat_writer``, which on a CPU writes only those), and the
step's post is queued on the trainer's CUDA stream behind those copies, which posts it once
they have run (:mod:`lightning_asyncsam.ascent.stream_post`; it replaced a stream synchronization that
cost 1.0-1.3 ms of a 7.8 ms H200 step): the trainer's thread never waits for the GPU;
no copy of the batch where it is lent: with ``ascent_data="next"`` (the default) and no user's transfer hook,
the trainer writes the address of each batch tensor into shared memory and the worker reads their
rows from the trainer's memory itself, one ``process_vm_readv`` (:mod:`lightning_asyncsam.ascent.lent_batch`;
the trainer holds the batch until its next submission, which comes after the worker's result); where
it is not (another ``ascent_data``, a transfer hook, a strided tensor, a worker that cannot read the
trainer's memory), one copy per batch tensor into the batch slot (of the whole batch where b' < b and
it is small, so that no leaf is sliced); either way no pytree walk, no key built, for a tensor or a
tuple, list or dict of tensors and plain values shaped like the last batch, or differing only in
the number of samples, as an epoch's short last batch does; new file names or ids are pickled into
a shared buffer, :mod:`lightning_asyncsam.ascent.shared_object`; one snapshot comparison of the optimizers'
hyperparameters (where a scheduler stepped, one pass over the param groups that writes their numbers
into shared memory, :mod:`lightning_asyncsam.ascent.hyperparameters`); five numbers written in one
call and one ``sem_post``. Each micro-batch adds one addition per dtype (perturb); on a CPU it
writes ``w_t + e`` into the flat buffers' twins, which the parameters take by a storage swap
until the restore swaps them back, O(1) and exact (:mod:`lightning_asyncsam.ascent.flat_params`);
on a GPU the restore is one copy per dtype from the published ``w_t``. On a CPU these are plain
tensor calls, not foreach calls (whose extra dispatch costs microseconds when it runs cold). No
allocation, no walk over the parameters in Python, no Lightning ``log``, no Lightning property that
walks the trainer (``global_step``, ``training``, ``root_device``: read from the
attributes behind them), and no Lightning callback hook (the strategy's callback has none per
batch, :mod:`lightning_asyncsam.batch_free`, and a rule without state connects no other). The
diagnostics (the gradients flattened once and two dot products for the cosine, ||e|| following from
the worker's ||g||) go to the loggers directly, and only on the steps that log. ``asyncsam/overhead_ms``
times every override that Lightning calls per batch (``training_step``, ``post_backward``,
``optimizer_step`` and its closure, ``batch_to_device``, the lookahead), waiting for the worker
excluded, into running totals that only a logging step reads (its window is their difference since
the last log: no other step keeps an account); benchmarks/overhead.py checks it against the
difference to SGD, side by side, and benchmarks/worker_interference.py separates what the
worker's activity costs the trainer. Measured on this project's 2-core VM (digits recipe, b = 32,
``log_every_n_steps=10``): 0.080-0.142 ms per step over 12 interleaved repetitions, 2.4-3.0% of
SGD's step (which took 3.2-4.9 ms; the eleventh to sixteenth rounds; 2.8% pooled over the twelve
runs of today's path, ``benchmarks/overhead_pool.py``), the logging steps' share
included (0.16-0.26 ms each, four in an epoch of 45 steps: an epoch's last step logs only when the
epoch has not, :func:`~lightning_asyncsam.logging_steps.logs_now`). The publishing writer is built
once per worker (on a GPU, for one flat buffer, the tensor's own ``copy_`` bound to its source: no
Python frame), and the global step is read through a counter made once per fit
(:func:`~lightning_asyncsam.logging_steps.optimizer_step_counter`). What remains is mostly cold: in
the middle of a step the first call of a tensor operation's code costs 13-17 microseconds (a copy,
an addition, through torch or NumPy alike; the same call repeated at once costs a tenth), each
Python call about 0.3-0.5 where a tight loop pays a tenth of that, and the 96 KB that perturb moves
come from memory that a forward and a backward have evicted (of the four copies of the first rounds,
the restore's became the swap, the publishing one the worker's own read of w_t and the batch slot's
the worker's own read of a lent batch, which left the perturbation the step's one cold tensor call).
So the steady state runs as few Python lines as it can (about 200 of this package's per step in 24
calls, counted with ``sys.settrace``): loops over leaves and dtypes run in C (``map``), and the rare
cases (a stale or held gradient, a wait, the start-up, a GPU stream that cannot post) live in methods of their
own, off the common path. tests/test_step_budget.py holds the path to that: it counts the bytecode
instructions that this package's frames run in a steady step (1,127 on CPython 3.11, lookahead and
wrappers included) and fails where the count grows with the parameters' or the batch's tensors.

The worker's side of a step (:mod:`lightning_asyncsam.ascent.replica_io`) is as lean: one copy per
dtype reads ``w_t`` into the replica's flat parameters, from the trainer's live buffers or the
published copy (the frozen parameters and buffers only when the trainer rewrote them), then one
``sem_post`` says so, one ``process_vm_readv`` reads a lent batch, the gradients accumulate in place into one
flat buffer per dtype, and ||g|| and Eq. 3's scaled e are one norm and one multiplication per dtype
into the shared buffer; the batch's views are sliced once per layout. On a CPU the replica's
convolution weights are in ``channels_last`` (``ascent_memory_format="auto"``,
:mod:`lightning_asyncsam.ascent.memory_format`): its forward and backward take 7-23% less time on
this project's conv nets (the worker's whole step 0.82-0.89x on the digits recipe), time that the
worker's core does not take from the trainer's where the two share a host; ``w_t`` in and e out
then cost one foreach copy each instead of one copy per dtype.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_asyncsam.ascent import lent_batch
from lightning_asyncsam.ascent.buffers import BatchSlot, FlatTensors
from lightning_asyncsam.ascent.hyperparameters import SharedHyperparameters
from lightning_asyncsam.ascent.launch import choose_start_method, quiet_fork
from lightning_asyncsam.ascent.mailbox import Mailbox
from lightning_asyncsam.ascent.memory_format import ReplicaFormat
from lightning_asyncsam.ascent.mirror import eval_statistics, mirrored_tensors, module_modes
from lightning_asyncsam.ascent.replica import trainer_dynamics, trainer_statics
from lightning_asyncsam.ascent.shared_object import SharedObject
from lightning_asyncsam.ascent.worker_process import WorkerSpec, serialize_module, worker_main
from lightning_asyncsam.logging_steps import epoch_counter

_POLL_S = 0.05


class AscentWorkerError(RuntimeError):
    """The ascent worker died, failed, or could not be started."""


_new_tuple = tuple.__new__  # a named tuple from its fields without its Python-level __new__


class AscentResult(NamedTuple):
    """What the worker reports for one step (a named tuple; :meth:`AscentWorker.take` builds it without a Python frame)."""

    step: int
    ascent_ms: float
    grad_norm: float
    samples: int


#: What a worker closed on a failed CUDA stream could not release (see AscentWorker.close).
_UNRELEASABLE: list[Any] = []


def _stream_drained(device: torch.device) -> bool:
    """Synchronize ``device`` (a step's post and its copies may be queued on a stream of it); False if it failed.

    The whole device, not the current stream: the stream that queued them may no longer be current.
    """
    try:
        torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - a CUDA error (sticky), or CUDA torn down at exit: the queued work never runs
        return False
    return True


def _check_live(live: Sequence[Tensor], layout: FlatTensors) -> list[Tensor]:
    """``live`` if it is what the worker can read ``w_t`` from: host shared memory, laid out as ``layout``."""
    live = list(live)
    expected = layout.device_flats()
    if len(live) != len(expected) or not all(
            t.device.type == "cpu" and t.is_shared() and t.dtype == e.dtype and t.numel() == e.numel()
            for t, e in zip(live, expected)):
        raise ValueError("AscentWorker.read_live: the trainer's flat parameter buffers must be one per dtype, in "
                         "host shared memory, laid out as the gradient buffers")
    return live


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep the spawned worker from re-running the user's ``__main__`` script.

    ``spawn`` normally re-imports the parent's main module in the child, which runs an unguarded
    script's training code a second time. The worker needs nothing from it: the module arrives by
    value (cloudpickle), so we hide the main module's origin while the child is being launched.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


class AscentWorker:
    """The main process's handle on one ascent worker.

    Args:
        module: the model whose loss the worker differentiates (copied, never shared).
        grad_params: the trainable parameters the optimizer holds, in a fixed order; the worker
            returns one gradient per entry.
        device: where the worker computes (``"cpu"`` or e.g. ``"cuda:1"``).
        threads: torch intra-op threads in the worker.
        capacity: the largest ascent batch it will be handed.
        nice: how much the worker lowers its scheduling priority (0 to 19; POSIX only).
        cpus: the cores the worker is confined to (Linux); None: wherever the OS puts it.
        rho: given, the worker delivers the perturbation ``e = rho * g / ||g||`` of Eq. 3 in
            ``grads`` (where ``||g||`` is finite) instead of the gradient g; None: g itself.
            :attr:`AscentResult.grad_norm` is ``||g||`` either way.
        memory_format: the layout of the replica's 4-D parameters (resolved by
            :func:`~lightning_asyncsam.ascent.memory_format.replica_format`): ``"preserve"`` the
            module's, ``"channels_last"``, or ``"channels_last_else_preserve"`` (back to the module's
            where its code fails in channels_last, that step retried).

    Example::

        >>> net = torch.nn.Linear(3, 1)
        >>> worker = AscentWorker(net, list(net.parameters()), "cpu", threads=1, capacity=4)
        >>> worker.grad_names
        ('weight', 'bias')
        >>> worker.close()  # start() forks or spawns; publish(), submit() and collect() drive one step each
    """

    def __init__(self, module: nn.Module, grad_params: Sequence[Tensor], device: str, threads: int, capacity: int,
                 nice: int = 0, cpus: Sequence[int] | None = None, rho: float | None = None,
                 memory_format: ReplicaFormat = "preserve") -> None:
        tensors = mirrored_tensors(module)
        by_id = {id(t): name for name, t in tensors.items()}
        missing = [i for i, p in enumerate(grad_params) if id(p) not in by_id]
        if missing:
            raise ValueError(f"AsyncSAM: optimizer parameters {missing} are not parameters of the LightningModule")
        self.grad_names = tuple(by_id[id(p)] for p in grad_params)
        # The trainable ones first, in grad_params order: they form a prefix of each dtype's buffer,
        # which flat_publisher() writes in one copy.
        trainable = set(self.grad_names)
        self.weight_names = self.grad_names + tuple(n for n in tensors if n not in trainable)
        self._weight_sources = [tensors[n] for n in self.weight_names]
        self._rest_sources = self._weight_sources[len(self.grad_names):]  # the same list every step (see flat_publisher)
        try:
            with torch.no_grad():
                self.weights = FlatTensors([t.detach() for t in self._weight_sources])
                self.grads = (FlatTensors([p.detach() for p in grad_params]),
                              FlatTensors([p.detach() for p in grad_params]))
        except RuntimeError as error:
            if "shared memory" not in str(error):
                raise
            raise RuntimeError(
                f"AsyncSAM: the ascent worker's buffers (about three times the model's size) do not fit in shared "
                f"memory ({error}). Give it more room: /dev/shm on Linux, 64 MB by default in a Docker container "
                "(`docker run --shm-size=...`)."
            ) from error
        self.slot = BatchSlot(capacity)
        # A lent batch (see submit), held until the next submission: the worker reads it before it
        # computes, and the trainer collects that result first. _probe: what the worker reads at
        # start-up to learn whether it can; _reader: the worker's pid, while it holds that right.
        self._lent: Any = None
        self._probe: Tensor | None = None
        self._reader: int | None = None
        self._live: list[Tensor] | None = None
        # Whether the worker reads w_t from the trainer's buffers (an attribute: read every step).
        self.live = False
        self._queued: list[tuple[Any, ...]] = []  # messages for the worker, sent with the next step
        # The serialized module travels as shared memory, not inside the pickled process arguments:
        # spawn writes those arguments into a pipe that the child drains only while it imports
        # torch and Lightning, so a large payload there would block Process.start() for seconds.
        payload = torch.frombuffer(bytearray(serialize_module(module)), dtype=torch.uint8).share_memory_()
        self._spec = WorkerSpec(payload, self.weight_names, self.grad_names, device, threads, nice,
                                tuple(cpus) if cpus else None, rho=rho, memory_format=memory_format)
        self._module = module  # its trainer's state is mirrored into the replica's stand-in
        self._trainer_sent: dict[str, Any] | None = None
        self._trainer_snapshot: tuple[int, list[tuple[Any, ...]]] | None = None
        self._optimizers: list[Any] | None = None  # the trainer's optimizers list, as read this epoch
        self._optimizers_epoch = -1
        self._epoch_counter: tuple[Any, Callable[[], int]] | None = None  # (trainer, its current_epoch as a C call)
        # The one optimizer's param_groups list (live: a group added to it is seen), for _sync_trainer's
        # quick check; None where several optimizers train, or before the first full check.
        self._one_groups: list[dict[str, Any]] | None = None
        self.start_method: str | None = None  # "fork" or "spawn", chosen by start()
        self._process: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        # Whether the worker has reported that it loaded the module (see wait_ready): an attribute,
        # not a property, as the trainer reads it every step.
        self.booted = False
        self.cuda_initialized: bool | None = None  # reported by the worker: did it create a CUDA context?
        self.in_flight: int | None = None
        self._mailbox: Mailbox | None = None
        self._hyperparameters = SharedHyperparameters()  # replaced at each start(), with the mailbox
        self._constants = SharedObject()  # a batch's non-tensor leaves, when they alone change (see submit)
        self._numbers_written = False  # hyperparameters changed through it since the last message
        self._result_posted = False  # take() took the done semaphore of the step in flight
        # Beside a GPU trainer: the device whose CUDA stream posts each step, behind its copies
        # (post_on_stream); None: submit() posts it. An attribute: the trainer reads it per fit.
        self.stream_device: torch.device | None = None

    @property
    def rho(self) -> float | None:
        """The rho of the e that the worker delivers in ``grads``; None: it delivers the gradient g."""
        return self._spec.rho

    @property
    def delivers_step(self) -> bool:
        """Whether ``grads`` holds the perturbation e (see ``rho``) rather than the gradient."""
        return self._spec.rho is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the worker (forked where that is safe, else spawned); it boots while the trainer goes on.

        The first :meth:`submit` waits until it is ready, so a boot that overlaps the sanity check,
        the first step (which is never perturbed) and data loading costs nothing. The start method
        is in :attr:`start_method` (see :mod:`lightning_asyncsam.ascent.launch`).
        """
        self.start_method = choose_start_method(self._spec.device, self._spec.threads)
        ctx = mp.get_context(self.start_method)
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self._mailbox = Mailbox(ctx)
        self._hyperparameters = SharedHyperparameters()
        self._constants = SharedObject()
        self._result_posted = False
        self.slot.desk, lender = None, None
        if lent_batch.available():
            self._probe = torch.frombuffer(bytearray(os.urandom(16)), dtype=torch.uint8)  # private memory
            lender = (os.getpid(), self._probe.data_ptr(), self._probe.numpy().tobytes())
        self._process = ctx.Process(
            target=worker_main,
            args=(child_conn, replace(self._spec, start_method=self.start_method, lender=lender), self.weights,
                  self.grads,
                  self._mailbox, self._hyperparameters, self._constants, self._live if self.live else None),
            name="asyncsam-ascent-worker",
            daemon=True,
        )
        self._conn = parent_conn
        self._trainer_sent = self._trainer_snapshot = self._one_groups = None
        self._modes_sent: frozenset[str] | None = None  # None: the replica's own, training mode throughout
        self._numbers_written = False
        self._optimizers, self._optimizers_epoch = None, -1
        with _main_module_hidden() if self.start_method == "spawn" else quiet_fork():
            self._process.start()
        child_conn.close()
        pid = self._process.pid
        if lender is not None and pid is not None and lent_batch.allow_reader(pid):  # before its probe
            self._reader = pid
        self.booted = False

    def post_on_stream(self, device: torch.device) -> bool:
        """Let ``device``'s current CUDA stream post each submitted step, once the copies queued before it have run.

        Beside a GPU trainer, the copies of ``w_t`` to the pinned buffers (and of e from them) are
        non-blocking; the worker may read the buffers only once they have run. Where this returns
        True, :meth:`submit` queues the step's post on the stream behind them
        (:mod:`lightning_asyncsam.ascent.stream_post`) and the trainer need not synchronize the
        stream first; False (no CUDA, no usable runtime, or ``ASYNCSAM_STREAM_POST=0``
        in the environment): the caller synchronizes the stream before each :meth:`submit`, as
        before. Call it after :meth:`start`.
        """
        switch = os.environ.get("ASYNCSAM_STREAM_POST", "1")
        if switch not in ("0", "1"):
            raise ValueError(f"ASYNCSAM_STREAM_POST={switch!r} is not allowed: use 1 (the stream posts each step, "
                             "the default) or 0 (the trainer synchronizes its stream before each post)")
        if switch == "0":
            return False
        if self._require_mailbox().post_on_stream(device):
            self.stream_device = device
        return self.stream_device is not None

    def woke(self) -> float:
        """When the step of the last result taken reached the worker (``time.perf_counter()``, comparable across processes on Linux)."""
        return self._require_mailbox().woke()

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the worker has loaded the module (no-op once it has)."""
        if self.booted:
            return
        msg = self._recv(timeout, what="start")
        if msg[0] != "ready":
            raise AscentWorkerError(f"AsyncSAM ascent worker sent {msg[0]!r} instead of 'ready'")
        self.booted = True
        self.cuda_initialized = bool(msg[2])
        if len(msg) > 3 and msg[3]:  # it can read the trainer's memory: batches may be lent
            self.slot.desk = self._require_mailbox().desk

    def publish(self, weights: Sequence[Tensor] | None = None) -> None:
        """Copy the current weights and buffers into shared memory (``w_t``).

        With live weights, the worker reads from here from the next step on (the trainer's
        parameters no longer live in the buffers it was given: ``module.to()`` moved them).
        """
        if self.live:
            self.live = False
            self._queued.append(("weights", "published"))
        self.weights.copy_from(self._weight_sources if weights is None else weights)

    def flat_publisher(self, flats: Sequence[Tensor]) -> Callable[[], object]:
        """:meth:`publish` as a call with no arguments, for trainable parameters that live in ``flats``.

        ``flats`` are laid out as ``grads`` is (one per dtype); built once, each call is one copy
        per dtype (see :meth:`FlatTensors.flat_writer`).
        """
        return self.weights.flat_writer(flats, len(self.grad_names), self._rest_sources, live=self.live)

    def read_live(self, flats: Sequence[Tensor]) -> None:
        """Read ``w_t`` of the trainable parameters from ``flats``, the trainer's own buffers, from :meth:`start` on.

        ``flats`` are host shared memory, one buffer per dtype laid out as ``grads``. The trainer
        then publishes nothing of the trainable parameters (:meth:`flat_publisher` writes the rest
        alone), and writes none of those buffers after a :meth:`submit` before :meth:`await_read`
        (or the semaphore of :meth:`read_signal`) says that the worker has read them. Call it
        before :meth:`start`.
        """
        if self._process is not None:
            raise AscentWorkerError("AsyncSAM: read_live() after start()")
        self._live = _check_live(flats, self.grads[0])
        self.live = True

    def read_signal(self) -> Callable[[bool], bool] | None:
        """With live weights, the bound ``acquire`` of the semaphore that the worker posts once it has read ``w_t``.

        The trainer takes one post per submitted step, ``acquire(False)`` (no system call when it
        is there), and :meth:`await_read` where it is not. None without live weights.
        """
        return self._require_mailbox().read.acquire if self.live else None

    def await_read(self, timeout: float | None = None) -> None:
        """Block until the worker has read the ``w_t`` of the step in flight (live weights), checking that it lives."""
        mailbox, conn, proc = self._require_mailbox(), self._require_conn(), self._process
        assert proc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not mailbox.read.acquire(True, _POLL_S):
            if self._poll(conn, 0.0) or not proc.is_alive():
                self._recv(timeout=5.0, what="the weights to be read")  # raises: the traceback, or the exit code
            if deadline is not None and time.monotonic() > deadline:
                pid = proc.pid
                self.close()
                raise AscentWorkerError(f"AsyncSAM ascent worker (pid {pid}) did not read the weights in {timeout} s")

    def published_flats(self) -> list[Tensor]:
        """The published ``w_t`` of the trainable parameters as one flat view per dtype, on the main device."""
        return self.weights.prefix_flats(len(self.grad_names))

    def published_params(self) -> list[Tensor]:
        """Views of the published ``w_t`` of the trainable parameters, in ``grad_params`` order, on the main device.

        Until the next :meth:`publish` they hold an exact copy of the weights: the backup that
        perturb and restore need, without a copy of their own (the worker only reads them).
        """
        views = self.weights.device_views()
        index = {name: i for i, name in enumerate(self.weight_names)}
        return [views[index[name]] for name in self.grad_names]

    def submit(self, step: int, batch: Any, n: int, batch_idx: int, lend: bool = False) -> None:
        """Hand the worker its ascent batch (the first ``n`` samples of ``batch``, all if it has fewer) and start ``step``.

        Call :meth:`publish` first: the worker reads the weights as soon as this returns.

        Args:
            step: the optimizer step.
            batch: the ascent batch.
            n: b'.
            batch_idx: the batch's index in the epoch.
            lend: the caller changes nothing in ``batch`` before it has collected this step's
                result (the next step's batch, ``ascent_data="next"``): where the worker can, it
                reads the batch from the trainer's memory and the trainer copies nothing
                (:mod:`lightning_asyncsam.ascent.lent_batch`). The batch is held until the next
                submission.
        """
        if self.in_flight is not None:
            raise AscentWorkerError(f"AsyncSAM: step {step} submitted while step {self.in_flight} is in flight")
        conn = self._conn
        if conn is None or not self.booted:
            conn = self._require_conn()
            self.wait_ready()
        messages = 0
        try:
            if self._queued:
                messages = self._send_queued(conn)
            if self.slot.write(batch, n, lend):
                conn.send(("layout", self.slot.layout))
                messages += 1
            elif self.slot.constants_changed and not self._constants.put(self.slot.layout[1]):  # type: ignore[index]
                # The same buffers, new non-tensor leaves (file names, ids): through shared memory, or
                # through the pipe where they do not fit.
                conn.send(("constants", self.slot.layout[1]))  # type: ignore[index]
                messages += 1
            messages += self._sync_trainer(conn)
        except (OSError, ValueError):
            self.in_flight = step
            self._recv(timeout=5.0, what=f"step {step} to be accepted")  # raises, naming the exit code
        lent = self.slot.lent
        self._lent = batch if lent else None
        self._mailbox.post_step(step, self.slot.n, batch_idx, messages, lent)  # type: ignore[union-attr]
        self.in_flight = step

    def _send_queued(self, conn: Connection) -> int:
        queued, self._queued = self._queued, []
        for message in queued:
            conn.send(message)
        return len(queued)

    def collect(self, timeout: float | None = None) -> AscentResult:
        """Wait for the step in flight and return its timing; the gradient is in ``grads[step % 2]``."""
        in_flight = self.in_flight
        if in_flight is None:
            raise AscentWorkerError("AsyncSAM: collect() called with no ascent step in flight")
        if not self._result_posted:
            self._await_result(timeout, what=f"the ascent gradient of step {in_flight}")
            self._result_posted = True
        return self.take()  # type: ignore[return-value]

    def take(self) -> AscentResult | None:
        """The step in flight's result (see :meth:`collect`) if it has finished, else None; never blocks.

        One ``sem_trywait`` on the result semaphore, no system call when nothing was posted. It runs
        at every step, mid-step, where each Python frame costs about a microsecond: one frame, the
        numbers read in one C call, the result built without calling its class.
        """
        mailbox = self._mailbox
        if not self._result_posted:
            if self.in_flight is None or self._conn is None or not mailbox.done.acquire(False):  # type: ignore[union-attr]
                return None
        self._result_posted = False
        step, ascent_ms, grad_norm, samples = mailbox.posted[:]  # type: ignore[union-attr]
        if step != self.in_flight:  # woken by a failing worker: its traceback is in the pipe
            msg = self._recv(timeout=5.0, what=f"the ascent gradient of step {self.in_flight}")
            raise AscentWorkerError(f"AsyncSAM ascent worker answered {msg[:2]!r} for step {self.in_flight}")
        self.in_flight = None
        return _new_tuple(AscentResult, (int(step), ascent_ms, grad_norm, int(samples)))

    def _await_result(self, timeout: float | None, what: str) -> None:
        """Block until the worker posts a result, checking every 50 ms that it lives and has not failed."""
        mailbox, conn, proc = self._require_mailbox(), self._require_conn(), self._process
        assert proc is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not mailbox.take_result(_POLL_S):
            if self._poll(conn, 0.0) or not proc.is_alive():
                self._recv(timeout=5.0, what=what)  # raises: the worker's traceback, or its exit code
            if deadline is not None and time.monotonic() > deadline:
                pid = proc.pid
                self.close()
                raise AscentWorkerError(f"AsyncSAM ascent worker (pid {pid}) did not deliver {what} in {timeout} s")

    def _require_mailbox(self) -> Mailbox:
        self._require_conn()
        assert self._mailbox is not None
        return self._mailbox

    def _poll(self, conn: Connection, timeout: float) -> bool:
        """``conn.poll(timeout)`` through one reused ``select.poll`` object.

        ``Connection.poll`` builds, registers and closes a selector on every call (about 10
        microseconds); the trainer polls once or twice per step.
        """
        poller = self.__dict__.get("_poller")
        if poller is None or poller[0] is not conn:
            if not hasattr(select, "poll"):  # pragma: no cover - Windows
                return conn.poll(timeout)
            poller = (conn, select.poll())
            poller[1].register(conn.fileno(), select.POLLIN)
            self.__dict__["_poller"] = poller
        return bool(poller[1].poll(timeout * 1e3))

    def _sync_trainer(self, conn: Connection) -> int:
        """Send the replica's trainer stand-in what changed: everything the first time, then epoch and hyperparameters.

        Returns:
            The number of messages sent (0 or 1).
        """
        trainer = getattr(self._module, "_trainer", None)
        if trainer is None:
            return 0
        # The common case, nothing changed, in O(1) Python per param group: the groups' values by
        # identity (a scheduler writes a new float), not a filtered dict per group; with one
        # optimizer, in a few lines against the last snapshot.
        groups, counter = self._one_groups, self._epoch_counter
        if groups is not None and counter is not None and counter[0] is trainer:
            try:
                if (counter[1](), list(map(tuple, map(dict.values, groups)))) == self._trainer_snapshot:
                    return 0
            except RuntimeError:  # a tensor-valued hyperparameter that compares ambiguously: the full check below
                pass
        sent = 0
        try:
            counter = self._epoch_counter
            if counter is None or counter[0] is not trainer:
                counter = self._epoch_counter = (trainer, epoch_counter(trainer))
            epoch = counter[1]()
            optimizers = self._optimizers
            if optimizers is None or epoch != self._optimizers_epoch:  # the list, re-read once an epoch
                optimizers, self._optimizers_epoch = trainer.optimizers, epoch
                self._optimizers = optimizers
                sent = self._send_modes(conn)
            groups = optimizers[0].param_groups if len(optimizers) == 1 else [
                g for o in optimizers for g in o.param_groups]
            snapshot = (epoch, list(map(tuple, map(dict.values, groups))))
            previous = self._trainer_snapshot
            self._one_groups = groups if len(optimizers) == 1 else None
            if previous is not None and snapshot == previous:
                return sent
            # Numbers alone changed (a new epoch, a scheduler's step): written in place, no message.
            if previous is not None and self._hyperparameters.write_numbers([o.param_groups for o in optimizers],
                                                                              epoch):
                self._trainer_snapshot = snapshot
                self._numbers_written = True
                return sent
        except RuntimeError:  # a tensor-valued hyperparameter that compares ambiguously: the full check below
            snapshot = None  # (which no quick check equals)
        self._trainer_snapshot = snapshot
        state = trainer_dynamics(trainer)
        if self._trainer_sent is None:
            state.update(trainer_statics(trainer))
            self._trainer_sent = {}
        # What the numbers written in place changed is not in _trainer_sent: the hyperparameters travel again.
        changed = {k: v for k, v in state.items() if k not in self._trainer_sent or self._trainer_sent[k] != v
                   or (k == "optimizers" and self._numbers_written)}
        if not changed:
            return sent
        conn.send(("trainer", changed))
        self._trainer_sent.update(changed)
        if "optimizers" in changed:
            self._hyperparameters.adopt(changed["optimizers"])
            self._numbers_written = False
        return sent + 1

    def _send_modes(self, conn: Connection) -> int:
        """Once an epoch: the module's train/eval modes, where they changed (see :func:`~.mirror.module_modes`).

        A submodule that the user keeps in eval mode during training (a frozen batch norm) runs so in
        the replica too, with the trainer's running statistics. Checked when an epoch starts (an
        ``on_train_epoch_start`` hook has run by then), in one pass over the modules.

        Returns:
            The number of messages sent (0 or 1).
        """
        modes, sent = module_modes(self._module), self._modes_sent
        self._modes_sent = modes
        if modes == sent or (sent is None and not modes):  # (the replica starts in training mode throughout)
            return 0
        conn.send(("modes", modes, eval_statistics(self._module)))
        return 1

    def _require_conn(self) -> Connection:
        if self._conn is None or self._process is None:
            raise AscentWorkerError("AsyncSAM ascent worker is not running")
        return self._conn

    def _recv(self, timeout: float | None, what: str) -> tuple:
        conn = self._require_conn()
        proc = self._process
        assert proc is not None
        pid = proc.pid
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._poll(conn, _POLL_S):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker's end closed: its exit code tells why, below
                    msg = None
                    proc.join(timeout=1.0)
                if msg is not None and msg[0] == "error":
                    self.close()
                    raise AscentWorkerError(f"AsyncSAM ascent worker (pid {pid}) failed:\n{msg[1]}")
                if msg is not None:
                    return msg
            if not proc.is_alive():
                proc.join(timeout=1.0)
                code = proc.exitcode
                self.close()
                hint = (
                    " It died while starting: check that the LightningModule can be pickled (cloudpickle) and "
                    "loaded in a fresh process, and that there is memory for a replica of it."
                    if what == "start" else ""
                )
                raise AscentWorkerError(
                    f"AsyncSAM ascent worker (pid {pid}) died with exit code {code} while the trainer waited "
                    f"for {what}. A negative code is the signal that killed it (-9: killed, often out of memory).{hint}"
                )
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise AscentWorkerError(f"AsyncSAM ascent worker (pid {pid}) did not deliver {what} in {timeout} s")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; safe to call any number of times, from any state."""
        proc, conn, mailbox = self._process, self._conn, self._mailbox
        self._process, self._conn, self.in_flight, self._result_posted = None, None, None, False
        # The stream may still hold a step's post and its copies: they run before anything is released.
        device, self.stream_device = self.stream_device, None
        stuck = device is not None and not _stream_drained(device)
        if conn is not None:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if mailbox is not None and proc is not None:
            mailbox.post_stop(messages=1)
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
            proc.close() if not proc.is_alive() else None
        if conn is not None:
            conn.close()
        if self._reader is not None:  # stopped: it reads nothing more, and its pid may be reused
            lent_batch.revoke_reader(self._reader)
            self._reader = None
        self._lent = self._probe = None
        self.slot.desk = None
        if stuck:  # a failed stream: what it still holds never runs, so nothing it names may be freed (a leak, once)
            _UNRELEASABLE.append((mailbox, self.weights, self.grads))
            return
        self.weights.unpin()
        for g in self.grads:
            g.unpin()

    def __del__(self) -> None:
        try:
            self.close(timeout=0.5)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
