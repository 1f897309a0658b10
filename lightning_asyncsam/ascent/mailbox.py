"""The per-step hand-shake between the trainer and the ascent worker: a few shared numbers and two semaphores.

A step's control message is five numbers one way (with the addresses of a lent batch's tensors
beside them, :mod:`lightning_asyncsam.ascent.lent_batch`) and five the other. Sent through a pipe, each costs a system call
on both sides, and the trainer's write also wakes the sleeping worker: on this project's 2-core
VM a pipe ``send`` that wakes the other process cost the trainer's thread about 30 microseconds
in the middle of a training step (an inter-processor interrupt, a VM exit), against 2 in a tight
loop, and the receive, poll and unpickling about 25 more. Here the numbers live in shared memory
and two counting semaphores say when they are ready: ``sem_post`` and ``sem_trywait`` are atomic
operations in user space (glibc's futex-based semaphores) that enter the kernel only to wake a
waiter, and they order the memory accesses around them (release and acquire), so the numbers
written before a post are the numbers read after the matching wait, on any architecture.

So that the trainer's post finds no sleeper to wake, the worker polls (``sem_trywait``) every
:data:`NAP_S` seconds, napping in between, for a while after it delivers a gradient, before it
blocks on the semaphore: twice the recent wait between delivering a gradient and receiving the
next step, at most :data:`SPIN_MAX_S`. A nap is a timer on the worker's own core; the trainer's
post then wakes nobody. Not a busy spin, which would hold a core for nothing (beside a GPU, one
that the data loaders want); a napping neighbour left SGD's digits epoch unchanged on this VM
(``benchmarks/core_contention.py``, ``results/core_contention_cpu.txt``). The price is that the
ascent starts up to about 0.1 ms late (a nap and the timer's slack), which the system-aware b'
absorbs.

Where the worker reads ``w_t`` in place, from the trainer's own parameter buffers
(:mod:`lightning_asyncsam.ascent.worker`, "live weights"), a third semaphore says that it has
read them: the trainer writes nothing there before it has taken that post (release and acquire
again, so the worker's reads come before the trainer's writes on any architecture).

Beside a GPU trainer the step's post is queued on the trainer's CUDA stream, behind the copies
that the step depends on (:meth:`Mailbox.post_on_stream`, :mod:`lightning_asyncsam.ascent.stream_post`):
the stream posts it when they are done, and the trainer's thread does not wait for the GPU.

Anything other than a step's numbers (a batch layout, the trainer stand-in's changes, a stop, an
error's traceback) still goes through the pipe: the step's numbers say how many such messages
precede it.

Example::

    >>> import multiprocessing as mp
    >>> box = Mailbox(mp.get_context("fork"))
    >>> box.post_step(step=3, n=8, batch_idx=0, messages=0)
    >>> box.wait_step(spin_s=0.0, alive=lambda: True), box.step()
    (True, (3, 8, 0, 0, 0))
    >>> box.post_result(step=3, ascent_ms=1.5, grad_norm=2.0, samples=8)
    >>> box.take_result(timeout=0.0), box.result()
    (True, (3, 1.5, 2.0, 8))
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

import torch

from lightning_asyncsam.ascent.lent_batch import LendingDesk
from lightning_asyncsam.ascent.stream_post import stream_post

_NUMBERS = 10  # the step's five (step, n, batch_idx, messages, lent), the result's four, the worker's wake time

SPIN_MAX_S = 0.01
NAP_S = 5e-5
_BLOCK_S = 0.5  # how long the worker blocks before it checks that its parent is alive
_STOP = -1


class Mailbox:
    """A step's numbers each way in shared memory, and a semaphore each way that says they are there.

    Created in the main process before the worker starts (with the worker's multiprocessing
    context) and handed to it as a ``Process`` argument: the numbers travel as a shared tensor,
    the semaphores as what they are.

    Args:
        ctx: the multiprocessing context that starts the worker.
    """

    def __init__(self, ctx: BaseContext) -> None:
        self._shared = torch.zeros(_NUMBERS, dtype=torch.float64).share_memory_()
        self.work = ctx.Semaphore(0)  # the trainer posted a step (or a stop)
        self.done = ctx.Semaphore(0)  # the worker posted a result (or sent an error through the pipe)
        self.read = ctx.Semaphore(0)  # the worker has read w_t from the trainer's live buffers (or failed)
        self._slots = _numbers(self._shared)
        self.posted = _result_numbers(self._shared)  # the last result's numbers, as floats (see result())
        self.desk = LendingDesk()  # the addresses of a lent batch's tensors (see post_step)
        # What post_step calls after writing the numbers: the step semaphore's post, or its post
        # queued on a CUDA stream (post_on_stream). Trainer side only.
        self.signal_step: Callable[[], object] = self.work.release

    def __getstate__(self) -> dict[str, Any]:
        return {"_shared": self._shared, "work": self.work, "done": self.done, "read": self.read, "desk": self.desk}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._slots = _numbers(self._shared)  # the shared memory's address in this process
        self.posted = _result_numbers(self._shared)
        self.signal_step = self.work.release

    # ----------------------------------------------------------------- the trainer's side
    def post_step(self, step: int, n: int, batch_idx: int, messages: int, lent: int = 0) -> None:
        """Start ``step`` on the first ``n`` samples of the batch, after ``messages`` pipe messages.

        ``lent``: how many tensors the worker reads from the trainer's memory, at the addresses in
        :attr:`desk`, into the batch slot (0: the trainer filled the slot).
        """
        self._slots[0:5] = (step, n, batch_idx, messages, lent)  # one call: each element's write is another
        self.signal_step()

    def post_on_stream(self, device: torch.device) -> bool:
        """From now on, queue each step's post on ``device``'s current CUDA stream; False where that cannot work.

        The stream posts it once the work queued before it (the step's copies) has run, and the
        caller never waits for the GPU (:mod:`lightning_asyncsam.ascent.stream_post`). Before the
        buffers that those copies touch are released, the stream must be synchronized.
        """
        post = stream_post(self.work, device)
        if post is None:
            return False
        self.signal_step = post
        return True

    def post_stop(self, messages: int) -> None:
        """Stop the worker once it has read ``messages`` pipe messages (the last of them: "stop")."""
        s = self._slots
        s[0], s[3] = _STOP, messages
        self.work.release()

    def take_result(self, timeout: float | None) -> bool:
        """Whether a result (or an error) was posted, waiting up to ``timeout`` seconds (0: never block)."""
        if self.done.acquire(False):
            return True
        if timeout is not None and timeout <= 0:
            return False
        return self.done.acquire(True, timeout)

    def result(self) -> tuple[int, float, float, int]:
        """``(step, ascent_ms, grad_norm, samples)`` of the result last posted (:attr:`posted` holds them as floats)."""
        step, ascent_ms, grad_norm, samples = self.posted[:]
        return int(step), ascent_ms, grad_norm, int(samples)

    # ----------------------------------------------------------------- the worker's side
    def wait_step(self, spin_s: float, alive: Callable[[], bool]) -> bool:
        """Wait for the next step: poll it between naps for ``spin_s`` seconds, then block. False if ``alive()`` turns False."""
        work = self.work
        if work.acquire(False):
            return True
        deadline = time.perf_counter() + spin_s
        while time.perf_counter() < deadline:
            time.sleep(NAP_S)
            if work.acquire(False):
                return True
        while not work.acquire(True, _BLOCK_S):
            if not alive():
                return False
        return True

    def step(self) -> tuple[int, int, int, int, int]:
        """``(step, n, batch_idx, messages, lent)`` of the step last posted; a negative step means stop."""
        s = self._slots
        return int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4])

    def post_result(self, step: int, ascent_ms: float, grad_norm: float, samples: int, woke: float = 0.0) -> None:
        """Post a step's result; ``woke``: the worker's ``time.perf_counter()`` when the step reached it."""
        self._slots[5:10] = (step, ascent_ms, grad_norm, samples, woke)
        self.done.release()

    def woke(self) -> float:
        """When the step of the last result reached the worker (``time.perf_counter()``, the same clock in every process on Linux)."""
        return self._slots[9]

    def wake(self) -> None:
        """Wake a trainer that waits for a result or a read (the worker sent an error through the pipe)."""
        self.done.release()
        self.read.release()


def _numbers(shared: torch.Tensor) -> Any:
    # A ctypes view of the shared tensor: a number costs ~0.1 microseconds to read or write, a
    # tensor element several.
    return (ctypes.c_double * _NUMBERS).from_address(shared.data_ptr())


def _result_numbers(shared: torch.Tensor) -> Any:
    # The result's four numbers alone, (step, ascent_ms, grad_norm, samples): ``posted[:]`` reads
    # them in one C call, for a reader (AscentWorker.take) that runs mid-step and wants no frame.
    return (ctypes.c_double * 4).from_address(shared.data_ptr() + 5 * shared.element_size())


def spin_budget(previous: float, wait_s: float) -> float:
    """The next spin: twice the smoothed wait between delivering a gradient and the next step, at most SPIN_MAX_S.

    Example::

        >>> round(spin_budget(0.002, 0.0005), 5)
        0.0018
        >>> spin_budget(0.001, 1.0)
        0.01
    """
    smoothed = 0.8 * previous / 2 + 0.2 * wait_s
    return min(SPIN_MAX_S, 2 * smoothed)


__all__ = ["NAP_S", "SPIN_MAX_S", "Mailbox", "spin_budget"]
