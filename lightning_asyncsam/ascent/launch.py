"""How the ascent worker is started: ``fork`` where that is provably safe, ``spawn`` otherwise.

A spawned worker is a fresh interpreter: it imports torch and Lightning again before it can
unpickle the module, seconds that a short run (a test, a notebook cell, a sweep of small jobs)
pays in full. A forked worker has those imports already. Forking a process that uses threads is
safe only when the child never needs state that another thread of the parent owned, so we fork
only when each of the following holds, and spawn otherwise:

1. **Linux.** Elsewhere ``fork`` is missing (Windows) or unsafe with system libraries (macOS).
2. **No accelerator is visible** (``torch.cuda.device_count() == 0``, and the same for any other
   accelerator). A forked child cannot use a CUDA context. Less obviously, once a process that
   sees any non-CPU device has run a backward pass, autograd has started one thread per device,
   and a forked child's first backward then fails with "Unable to handle autograd's threading in
   combination with fork-based multiprocessing" (``Engine::start_device_threads`` calls
   ``track_bad_autograd_forks`` only when ``num_devices > 0``, and
   ``Engine::initialize_device_threads_pool`` checks it: ``torch/csrc/autograd/engine.cpp``).
   So the ascent device must be the CPU and there must be no device at all, not merely no CUDA
   context yet, and no autograd device thread may be running: those threads are named
   ``pt_autograd_<i>`` (``Engine::thread_init``), and we look for them in ``/proc/self/task``.
   This is no theory: after the backward pass of a ``torch.compile``-d module, eight of them run
   on this project's CPU-only machine.
3. **The worker runs with exactly one torch thread.** GNU libgomp, PyTorch's OpenMP on Linux,
   is not fork-safe once the parent has used a thread team: the child's first parallel region
   waits for threads that were not copied (pytorch/pytorch#17199). The child never enters one:
   ATen's ``parallel_for`` and ``parallel_reduce`` run the body inline, outside OpenMP, when
   ``at::get_num_threads() > 1`` is false (``aten/src/ATen/Parallel-inl.h``), and
   ``get_num_threads`` is ``omp_get_max_threads()``, which ``torch.set_num_threads(1)`` (called by
   the worker before it computes anything) sets to 1 (``aten/src/ATen/ParallelOpenMP.cpp``). oneDNN (mkldnn), which
   PyTorch builds on the same OpenMP runtime, runs ``parallel(nthr, f)`` inline when
   ``nthr == 1`` (``src/common/dnnl_thread.cpp``); its thread count is
   ``dnnl_get_max_threads() == omp_get_max_threads()``, and a primitive that the parent created
   for more threads is never reused, because the primitive cache key holds the thread count
   (``impl_nthr_`` in ``src/common/primitive_hashing.cpp``) and ``set_num_threads`` clears
   PyTorch's own mkldnn cache. MKL is told one thread by the same call
   (``mkl_set_num_threads_local``); its source is closed, so for MKL the argument rests on that
   documented setting and on ``tests/test_launch.py``, which forks a worker after the parent ran
   a two-thread OpenMP team through convolutions (oneDNN), GEMMs (MKL) and backward passes.

The child then resets what it inherited but must not run (:func:`after_fork`): the parent's
Python signal handlers (Lightning's SIGTERM handler would act on the trainer), and the parent's
objects are frozen out of the garbage collector, so that no finalizer of the trainer's objects
ever runs in the child. multiprocessing's fork launcher ends the child with ``os._exit``
(``multiprocessing/popen_fork.py``), so the parent's ``atexit`` handlers never run there either, and
its ``_bootstrap`` clears the parent's multiprocessing finalizers first.

The module still travels as bytes under ``fork``: the replica is a detached copy, with no trainer
and no hooks, exactly as under ``spawn``.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def choose_start_method(device: str, threads: int) -> str:
    """``"fork"`` where forking the worker is provably safe (see the module docstring), else ``"spawn"``.

    Example::

        >>> choose_start_method("cpu", threads=2)  # a worker with a thread team is always spawned
        'spawn'
        >>> choose_start_method("cpu", threads=1) == ("fork" if fork_is_safe() else "spawn")
        True
    """
    if torch.device(device).type != "cpu" or threads != 1:
        return "spawn"
    return "fork" if fork_is_safe() else "spawn"


def fork_is_safe() -> bool:
    """Whether this process may fork a one-thread CPU worker: Linux, and no accelerator to be seen."""
    if not sys.platform.startswith("linux"):
        return False
    if torch.cuda.is_initialized() or torch.cuda.device_count() > 0:
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.device_count() > 0:
        return False
    return not autograd_device_threads()


def autograd_device_threads() -> int:
    """How many of autograd's per-device threads run in this process (Linux; 0 where it cannot tell)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    count = 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().startswith("pt_autograd")
        except OSError:  # the thread ended meanwhile
            continue
    return count


@contextmanager
def quiet_fork() -> Iterator[None]:
    """Silence Python 3.12's generic warning that forking a multi-threaded process may deadlock.

    It cannot know what the child will do; this module argues what ours does, and forks only then.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*multi-threaded, use of fork\(\) may lead to deadlocks",
                                category=DeprecationWarning)
        yield


def after_fork() -> None:
    """Run first in a forked worker: forget what belongs to the trainer.

    Signal handlers go back to Python's defaults (SIGINT raises KeyboardInterrupt, the others
    take the OS default), so the parent's handlers (Lightning installs one for SIGTERM) never run
    in the worker. Every inherited object is frozen out of the garbage collector: a cycle that was
    garbage in the parent is never collected here, so no finalizer of the trainer's objects runs.
    """
    gc.freeze()
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = ["after_fork", "autograd_device_threads", "choose_start_method", "fork_is_safe", "quiet_fork"]
