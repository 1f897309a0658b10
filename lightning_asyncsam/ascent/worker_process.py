"""The worker process's side of :mod:`lightning_asyncsam.ascent.worker`: its entry point and how the module reaches it.

:class:`~lightning_asyncsam.ascent.worker.AscentWorker` (the trainer's side, with the contract that both
sides keep) starts :func:`worker_main` in a process of its own with a :class:`WorkerSpec` and the shared
buffers; the module crosses as bytes (:func:`serialize_module`), classes by value where the worker could
not import them by name. Nothing here runs in the trainer's process but the serialization.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import sys
import time
import traceback
import types
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch
from torch import Tensor, nn

from lightning_asyncsam.ascent.buffers import FlatTensors
from lightning_asyncsam.ascent.hyperparameters import SharedHyperparameters
from lightning_asyncsam.ascent.launch import after_fork
from lightning_asyncsam.ascent.lent_batch import BatchPuller, probe
from lightning_asyncsam.ascent.loss import ascent_loss
from lightning_asyncsam.ascent.mailbox import SPIN_MAX_S, Mailbox, spin_budget
from lightning_asyncsam.ascent.memory_format import ReplicaFormat, set_channels_last
from lightning_asyncsam.ascent.mirror import apply_modes, named_tensors
from lightning_asyncsam.ascent.replica import (
    TrainerStandIn,
    attach_stand_in,
    compile_replica,
    compile_settings,
    uncompiled,
)
from lightning_asyncsam.ascent.replica_io import BatchReader, ReplicaIO
from lightning_asyncsam.ascent.shared_object import SharedObject


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the worker needs besides the buffers; plain picklable values only."""

    module_bytes: Tensor  # uint8, in shared memory: see AscentWorker.__init__
    weight_names: tuple[str, ...]
    grad_names: tuple[str, ...]
    device: str
    threads: int
    nice: int = 0
    cpus: tuple[int, ...] | None = None
    start_method: str = "spawn"
    rho: float | None = None  # set: the worker delivers e = rho g / ||g|| (Eq. 3) instead of g
    # The trainer's pid, and the address and bytes of a buffer of its own that the worker reads at
    # start-up to learn whether it can read lent batches (lent_batch.probe); None: never lent.
    lender: tuple[int, int, bytes] | None = None
    memory_format: ReplicaFormat = "preserve"  # the replica's layout: lightning_asyncsam.ascent.memory_format


def serialize_module(module: nn.Module) -> bytes:
    """Serialize ``module`` (uncompiled, with its compile context beside it) for the worker.

    Classes travel by value where a fresh interpreter could not import them by name: those of
    ``__main__`` (a script, a notebook: cloudpickle's own rule), of ``__mp_main__`` (the user's
    script inside a rank started by the ``spawn`` launcher, where a reference would name a module
    that the worker does not have), and of any module that has no import spec (code run by ``exec``).

    Example::

        >>> module, dynamo_ctx = load_module(serialize_module(torch.nn.Linear(2, 1)), "cpu")
        >>> type(module).__name__, dynamo_ctx
        ('Linear', None)
    """
    import cloudpickle

    by_value = _unimportable_modules(module)
    for m in by_value:
        cloudpickle.register_pickle_by_value(m)
    buf = io.BytesIO()
    dynamo_ctx = compile_settings(module)
    try:
        with uncompiled(module):
            torch.save((module, dynamo_ctx), buf, pickle_module=cloudpickle)
    finally:
        for m in by_value:
            cloudpickle.unregister_pickle_by_value(m)
    return buf.getvalue()


def load_module(payload: bytes, device: torch.device | str) -> tuple[nn.Module, object]:
    """The inverse of :func:`serialize_module`: ``(module, dynamo_ctx or None)``, the tensors on ``device``."""
    module, dynamo_ctx = torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    return module, dynamo_ctx


def _unimportable_modules(module: nn.Module) -> list[types.ModuleType]:
    """The modules defining ``module``'s classes that a fresh interpreter cannot import by name."""
    out: dict[str, types.ModuleType] = {}
    for sub in module.modules():
        for cls in type(sub).__mro__:
            name = cls.__module__
            m = sys.modules.get(name)
            if m is None or name in out or name == "__main__":  # cloudpickle sends __main__ by value itself
                continue
            if name == "__mp_main__" or (getattr(m, "__spec__", None) is None and name != "builtins"):
                out[name] = m
    return list(out.values())


def worker_main(conn: Connection, spec: WorkerSpec, weights: FlatTensors, grads: tuple[FlatTensors, FlatTensors],
                 mailbox: Mailbox, hyperparameters: SharedHyperparameters, constants: SharedObject,
                 live: list[Tensor] | None = None) -> None:
    """Entry point of the worker process."""
    try:
        if spec.start_method == "fork":
            after_fork()
        torch.set_grad_enabled(True)  # a forked child inherits the parent thread's grad mode
        if spec.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, spec.cpus)  # before torch starts its thread pool, which inherits it
        torch.set_num_threads(spec.threads)
        if spec.nice and hasattr(os, "nice"):
            os.nice(spec.nice)
        device = torch.device(spec.device)
        module, dynamo_ctx = load_module(spec.module_bytes.numpy().tobytes(), device)
        # .to() also resets a LightningModule's remembered device, so `self.device` in the user's
        # training_step names the worker's device, not the trainer's GPU.
        module.to(device)
        # Before ReplicaIO moves the parameters into its flat buffers, which keep each one's strides.
        channels_last = spec.memory_format != "preserve"
        if channels_last:
            set_channels_last(module, True)
        module.train()
        trainer = TrainerStandIn()
        attach_stand_in(module, trainer)
        if dynamo_ctx is not None:
            compile_replica(module, dynamo_ctx)
        tensors = named_tensors(module)
        mirror = [tensors[n] for n in spec.weight_names]
        trainable = [tensors[n] for n in spec.grad_names]
        wanted = {id(p) for p in trainable}
        for p in module.parameters():
            p.requires_grad_(id(p) in wanted)
        io = ReplicaIO(mirror, trainable, weights, grads[0], live=live)
        reader = BatchReader()
        puller = BatchPuller(spec.lender[0]) if spec.lender is not None and probe(*spec.lender) else None
        layout = None
        parent = mp.parent_process()
        alive = (lambda: parent.is_alive()) if parent is not None else (lambda: True)
        conn.send(("ready", os.getpid(), torch.cuda.is_initialized(), puller is not None))
        spin_s, delivered = SPIN_MAX_S / 10, time.perf_counter()
        while True:
            if not mailbox.wait_step(spin_s, alive):
                return  # the trainer is gone
            woke = time.perf_counter()  # beside a GPU trainer, its stream posted the step when its copies were done
            spin_s = spin_budget(spin_s, woke - delivered)
            step, n, batch_idx, messages, lent = mailbox.step()
            for _ in range(messages):  # what the trainer sent through the pipe before this step
                msg = conn.recv()
                if msg[0] == "stop":
                    return
                if msg[0] == "layout":
                    layout = msg[1]
                    constants.mark_seen()  # the layout carries the batch's current non-tensor leaves
                elif msg[0] == "constants":
                    layout = (layout[0], msg[1], layout[2])  # type: ignore[index]  # a new object: re-read
                    constants.mark_seen()
                elif msg[0] == "weights":  # the trainer's parameters left the live buffers
                    io.stop_live(weights)
                elif msg[0] == "modes":
                    apply_modes(module, msg[1], msg[2])
                elif msg[0] == "trainer":
                    trainer.update(msg[1])
                    if "optimizers" in msg[1]:
                        hyperparameters.adopt(msg[1]["optimizers"])
            if step < 0:
                return
            if constants.changed():  # the batch's new non-tensor leaves (file names), through shared memory
                layout = (layout[0], constants.get(), layout[2])  # type: ignore[index]
            trainer.update({"global_step": step})
            if hyperparameters.changed():  # a new epoch, a scheduler's numbers
                epoch = hyperparameters.apply(trainer._hyperparameter_groups())
                if epoch is not None:
                    trainer.update({"current_epoch": epoch})
            start = time.perf_counter()
            io.load(weights)
            if lent:  # the trainer keeps the batch until it has this step's result
                puller.pull(layout[2], n, mailbox.desk)  # type: ignore[union-attr,index]
            if io.live:  # the trainer may write its buffers again (after this step's backward), and
                mailbox.read.release()  # its step's hooks may change a lent batch (the next step's)
            batch = reader.read(layout, n, device)  # type: ignore[arg-type]
            io.zero_grads()
            try:
                ascent_loss(module, batch, batch_idx).backward()
            except Exception as error:  # noqa: BLE001 - re-raised unless the layout is to blame
                if not channels_last:
                    raise
                if spec.memory_format == "channels_last":
                    raise RuntimeError("AsyncSAM's ascent failed with the replica's weights in channels_last "
                                       "(ascent_memory_format='channels_last'): the module's code cannot run in "
                                       "that layout; use ascent_memory_format='auto' or 'preserve'") from error
                # "auto": the module's own layout for the rest of the fit, and this step again in it;
                # said once on the trainer's stderr (inherited), as the speed it gives up is the user's.
                channels_last = False
                set_channels_last(module, False)
                sys.stderr.write(f"AsyncSAM: the ascent replica runs in the module's own memory format: its code "
                                 f"failed in channels_last ({type(error).__name__}: {str(error)[:200]}). "
                                 "ascent_memory_format='preserve' skips the attempt.\n")
                sys.stderr.flush()
                io.zero_grads()
                ascent_loss(module, batch, batch_idx).backward()
            # Eq. 3's scale here, off the trainer's thread (with spec.rho): one multiplication per dtype.
            norm = io.deliver(grads[step % 2], spec.rho)
            mailbox.post_result(step, (time.perf_counter() - start) * 1e3, norm, n, woke)
            delivered = time.perf_counter()
    except KeyboardInterrupt:
        return
    except BaseException:  # noqa: BLE001 - everything must reach the trainer
        try:
            conn.send(("error", traceback.format_exc()))
            mailbox.wake()
        finally:
            os._exit(1)


__all__ = ["WorkerSpec", "load_module", "serialize_module", "worker_main"]
