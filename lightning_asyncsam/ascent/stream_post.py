"""A GPU trainer's step posted to the worker by the CUDA stream itself, behind the copies it depends on.

Beside a GPU trainer the worker reads ``w_t`` from pinned host buffers that a non-blocking
device-to-host copy fills, and the trainer's next copy of e reads a pinned buffer that the worker
writes two steps later. The post that starts step t must therefore come after the copies of step t
have run. Synchronizing the stream before the post gives that order, but the trainer's thread then
waits for the GPU to drain everything queued before the copies (the previous step's backward and
update): 1.0-1.3 ms of a launch-bound 7.8 ms H200 step (``benchmarks/README.md``, GPU-NOTES).

``cudaLaunchHostFunc(stream, fn, data)`` queues a host function behind the stream's work: CUDA's
callback thread calls ``fn(data)`` once everything enqueued before it has completed, and holds
back what is enqueued after it until ``fn`` returns. With ``fn = sem_post`` and ``data`` the
``sem_t *`` of the worker's step semaphore (a POSIX semaphore that ``multiprocessing`` keeps in
shared memory: its ``handle``), the stream posts the step the moment its copies are done, and the
trainer's thread goes on at once. ``sem_post`` is the function CUDA allows there: it makes no CUDA
call and does not block. The price moves to the GPU: the stream holds back the next step's kernels
until the callback thread has run it, which takes that thread's wake-up (not measured here), where
the synchronization held the trainer's thread for the whole queue. The step's numbers are written before the launch, and the post releases
them to the worker's wait as before (:mod:`lightning_asyncsam.ascent.mailbox`).

This needs the CUDA runtime that torch loaded (its ``libcudart``, found by name without loading
another one; else the driver's ``cuLaunchHostFunc``) and libc's ``sem_post``. :func:`stream_post`
checks the whole path once, by posting a private semaphore through the stream and synchronizing,
and returns None where anything is missing or wrong, so that the trainer keeps the synchronizing
post. A stream under CUDA graph capture would record the host function instead of running it; the
trainer posts at the start of its step, outside the module's code, where no capture runs (a
``torch.compile(mode="reduce-overhead")`` module captures and replays inside its own call).

Example::

    >>> import multiprocessing as mp
    >>> semaphore = mp.get_context("spawn").Semaphore(0)
    >>> call_as_host_function(semaphore)  # what CUDA's callback thread does, here on this thread
    >>> semaphore.acquire(False)
    True
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

#: The runtime names tried, newest first: torch wheels ship one of them, already loaded.
_CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")
_HOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void (*)(void *userData): CUDA's cudaHostFn_t


def _sem_post_address() -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        post = ctypes.CDLL(None).sem_post
    except (OSError, AttributeError):  # pragma: no cover - a libc without it
        return None
    return ctypes.cast(post, ctypes.c_void_p).value


_SEM_POST = _sem_post_address()
_KEPT: list[Any] = []  # semaphores of failed start-up checks, never freed under a post still queued


def semaphore_address(semaphore: Any) -> int | None:
    """The ``sem_t *`` behind a ``multiprocessing`` semaphore in this process (POSIX), or None."""
    handle = getattr(getattr(semaphore, "_semlock", None), "handle", None)
    return handle if isinstance(handle, int) and handle != 0 else None


def call_as_host_function(semaphore: Any) -> None:
    """Post ``semaphore`` exactly as the stream's host function will: ``sem_post`` called through a ``cudaHostFn_t``.

    The CPU half of :func:`stream_post`'s path (the function, its address, the argument), so
    that it is tested where no GPU is.
    """
    address = semaphore_address(semaphore)
    if _SEM_POST is None or address is None:
        raise OSError("this platform has no POSIX sem_post for multiprocessing semaphores")
    _HOST_FN(_SEM_POST)(address)


def _loaded_cudart() -> Any:
    """The CUDA runtime library that this process already loaded (torch's), or None: none is loaded again."""
    major = (torch.version.cuda or "").split(".")[0]
    names = sorted(_CUDART_NAMES, key=lambda name: not name.startswith(f"libcudart.so.{major}"))  # torch's first
    for name in names:
        try:
            return ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        except OSError:
            continue
    return None


def _host_function_launcher() -> Any:
    """``cudaLaunchHostFunc`` of torch's runtime, else the driver's ``cuLaunchHostFunc`` (a runtime linked statically).

    Both take the stream handle that torch's ``Stream.cuda_stream`` gives (a runtime stream is a
    driver stream), and both return 0 on success.
    """
    cudart = _loaded_cudart()
    launch = getattr(cudart, "cudaLaunchHostFunc", None) if cudart is not None else None
    if launch is None:
        try:
            launch = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD).cuLaunchHostFunc
        except (OSError, AttributeError):
            return None
    launch.restype = ctypes.c_int
    launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return launch


def stream_post(semaphore: Any, device: torch.device) -> Callable[[], None] | None:
    """A call that queues ``semaphore``'s post on ``device``'s current stream; None where that cannot work here.

    Checked once, on the current stream: a private semaphore is posted through it and the stream
    synchronized; the post must have arrived, exactly once.

    Args:
        semaphore: a ``multiprocessing`` semaphore (the mailbox's step semaphore).
        device: the trainer's CUDA device.
    """
    if _SEM_POST is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    address = semaphore_address(semaphore)
    launch = _host_function_launcher()
    if address is None or launch is None:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()

    def post(stream: Any = None, target: int = address) -> None:
        stream = torch.cuda.current_stream(index) if stream is None else stream
        error = launch(stream.cuda_stream, _SEM_POST, target)
        if error != 0:
            raise RuntimeError(f"AsyncSAM: cudaLaunchHostFunc failed with CUDA error {error}")

    probe = _private_semaphore()
    probe_address = semaphore_address(probe)
    if probe_address is None:
        return None
    try:
        stream = torch.cuda.current_stream(index)
        post(stream, probe_address)
        stream.synchronize()
        ok = probe.acquire(False) and not probe.acquire(False)
    except (RuntimeError, OSError, ValueError, TypeError):
        _KEPT.append(probe)  # a post that may still run must find its semaphore
        ok = False
    return post if ok else None


def _private_semaphore() -> Any:
    """A fresh POSIX semaphore, for the start-up check (any context's: they are all ``sem_open`` ones)."""
    import multiprocessing as mp

    return mp.get_context("spawn").Semaphore(0)


__all__ = ["call_as_host_function", "semaphore_address", "stream_post"]
