"""Lent batches: the worker copies the ascent batch out of the trainer's memory itself (Linux).

The batch slot (:class:`~lightning_asyncsam.ascent.buffers.BatchSlot`) used to be filled by the
trainer: one copy per batch tensor, on the critical path, every step. That copy was the trainer's
dearest per-step operation on the digits recipe (about 20 microseconds of a step's 100 on this
project's 2-core VM, mostly the cold start of a tensor call in the middle of a step), and it grows
with the data: b' = 64 ImageNet images are 38 MB of memory traffic on the trainer's thread per
step. With a lent batch, the trainer writes the address of each batch tensor into shared memory
(:class:`LendingDesk`) and the worker reads the first ``n`` rows of each into the slot with one
``process_vm_readv`` system call (:class:`BatchPuller`): the kernel copies from the trainer's pages
into the worker's, and the trainer's thread touches none of the bytes.

Why this is safe. The trainer lends only the batch of the *next* step (``ascent_data="next"``,
the default), only where no batch-transfer hook of the user's runs on it (one could change it in
place; Lightning's own precision casts make new tensors), and only where the next step's other
hooks cannot reach it before the worker has read it: beside a GPU they get the device's copy, and
on a CPU (where they get the host batch itself) the worker reads the batch before its "read" post,
which the trainer takes before the current step ends (live weights; without them, batches are
copied). That next step begins by collecting the gradient that the worker computed on the batch.
The trainer keeps a reference to the batch until its next submission
(:class:`~lightning_asyncsam.ascent.worker.AscentWorker`), so its memory cannot be freed or reused
before the read; a worker that is stopped reads nothing. Only tensors that are contiguous, on the
CPU and of a real dtype are lent (their rows are a prefix of their memory); anything else, or a
batch whose layout changed, is copied by the trainer as before.

Permission. Reading another process's memory takes the right to trace it: with Linux's Yama
module at its usual ``ptrace_scope=1`` (Ubuntu's default) a process may trace only its
descendants, not its parent, so the trainer names its worker with ``prctl(PR_SET_PTRACER)``
(:func:`allow_reader`) for the worker's lifetime and takes the right back when it stops; one worker
per process holds it at a time. A stricter Yama scope, a seccomp profile without the call (some
containers), or another OS leave the worker unable to read: it probes a known buffer of the
trainer's at start-up (:func:`probe`) and, where the probe fails, the trainer copies the batches
itself, with the same result.

Example::

    >>> desk = LendingDesk()
    >>> batch = [torch.arange(4.0)]  # lent: it must outlive the read
    >>> desk.lend(batch), desk.lend([batch[0][::2]])  # a strided view is not lent
    (True, False)
    >>> bytes(read_own(desk.addresses()[0], 8)) == bytes(torch.arange(2.0).numpy())  # what a worker would read
    True
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

_PR_SET_PTRACER = 0x59616D61  # "Yama": prctl(2)
MAX_LENT = 16  # the most tensors a lent batch may have; a batch with more is copied


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _libc_call(name: str) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # pragma: no cover - a libc without it
        return None


_READV = _libc_call("process_vm_readv")
if _READV is not None:
    _READV.restype = ctypes.c_ssize_t
    _READV.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.POINTER(_IOVec),
                       ctypes.c_ulong, ctypes.c_ulong]
_PRCTL = _libc_call("prctl")

#: The process that may read this one's memory now (see allow_reader); None: nobody was named.
_reader: int | None = None


def available() -> bool:
    """Whether this platform has ``process_vm_readv`` at all (Linux with glibc or musl)."""
    return _READV is not None


def allow_reader(pid: int) -> bool:
    """Let process ``pid`` (the worker) read this process's memory; False if another one holds that right.

    Without Yama, ``prctl`` refuses the request and nothing needs allowing; the call is harmless.
    """
    global _reader
    if _reader is not None and _reader != pid:
        return False
    _reader = pid
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)
    return True


def revoke_reader(pid: int) -> None:
    """Take back the right given to ``pid`` by :func:`allow_reader` (before its pid can be reused)."""
    global _reader
    if _reader != pid:
        return
    _reader = None
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PTRACER, ctypes.c_ulong(0), 0, 0, 0)


def read_own(address: int, size: int) -> bytearray:
    """``size`` bytes at ``address`` of this process, read as a worker would (for tests and examples)."""
    return _read(os.getpid(), address, size)


def probe(pid: int, address: int, expected: bytes) -> bool:
    """Whether this process can read ``expected`` at ``address`` in process ``pid`` (the worker's start-up check)."""
    try:
        return bytes(_read(pid, address, len(expected))) == expected
    except OSError:
        return False


def _read(pid: int, address: int, size: int) -> bytearray:
    if _READV is None:
        raise OSError("process_vm_readv is not available on this platform")
    out = bytearray(size)
    local = _IOVec(ctypes.addressof((ctypes.c_char * size).from_buffer(out)), size)
    remote = _IOVec(address, size)
    got = _READV(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got != size:
        raise OSError(ctypes.get_errno(), f"process_vm_readv read {got} of {size} bytes")
    return out


class LendingDesk:
    """The addresses of a lent batch's tensors (at most :data:`MAX_LENT`), in shared memory.

    The trainer writes them, the worker reads them; how many there are travels with the step's
    numbers (:meth:`~lightning_asyncsam.ascent.mailbox.Mailbox.post_step`).
    """

    def __init__(self) -> None:
        self._shared = torch.zeros(MAX_LENT, dtype=torch.int64).share_memory_()
        self._addresses = _addresses_view(self._shared)

    def __getstate__(self) -> dict[str, Any]:
        return {"_shared": self._shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._addresses = _addresses_view(self._shared)

    def lend(self, leaves: Sequence[Tensor]) -> bool:
        """Write the addresses of ``leaves`` if they can be lent (:func:`lendable`, at most :data:`MAX_LENT`)."""
        if len(leaves) > MAX_LENT or not lendable(leaves):
            return False
        self.write(leaves)
        return True

    def write(self, leaves: Sequence[Tensor]) -> None:
        """:meth:`lend` for leaves already checked (the batch slot's hot path)."""
        self._addresses[0:len(leaves)] = list(map(Tensor.data_ptr, leaves))

    def addresses(self) -> list[int]:
        """The addresses as last written (the worker's side reads them after the step's semaphore)."""
        return list(self._addresses)


def _addresses_view(shared: Tensor) -> Any:
    # A ctypes view: one C call writes or reads them all, where tensor elements cost a call each.
    return (ctypes.c_int64 * shared.numel()).from_address(shared.data_ptr())


def lendable(leaves: Sequence[Any]) -> bool:
    """Whether the worker can read each of ``leaves`` as raw rows: contiguous CPU tensors of a real dtype."""
    return all(isinstance(x, Tensor) and not x.dtype.is_complex and x.is_cpu and x.is_contiguous() for x in leaves)


class BatchPuller:
    """The worker's side: reads the lent rows from the trainer into the batch slot, one system call a step.

    Args:
        pid: the trainer's process id.

    Example::

        >>> buffers = [torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)]
        >>> source = [torch.arange(8.0).view(4, 2), torch.arange(4)]
        >>> desk = LendingDesk(); _ = desk.lend(source)
        >>> BatchPuller(os.getpid()).pull(buffers, 3, desk)
        >>> buffers[0][:3].flatten().tolist(), buffers[1].tolist()
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0, 1, 2, 0])
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._key: Any = None
        self._local: Any = None
        self._remote: Any = None
        self._total = 0

    def pull(self, buffers: Sequence[Tensor | None], n: int, desk: LendingDesk) -> None:
        """Read the first ``n`` rows of each lent tensor into the matching buffer of ``buffers`` (the slot's)."""
        targets = [b for b in buffers if b is not None]
        rows = [b.stride(0) * b.element_size() if b.dim() else b.element_size() for b in targets]
        # By address and row size, not by the buffers' ids: a new layout's buffer may reuse a freed one's id.
        key = (tuple(map(Tensor.data_ptr, targets)), tuple(rows), n)
        if key != self._key:  # once per layout and n: the slot's side of the copy and the sizes
            sizes = [n * row for row in rows]
            self._local = (_IOVec * len(targets))(*[_IOVec(b.data_ptr(), s) for b, s in zip(targets, sizes)])
            self._remote = (_IOVec * len(targets))(*[_IOVec(0, s) for s in sizes])
            self._total, self._key = sum(sizes), key
        remote = self._remote
        for iov, address in zip(remote, desk.addresses()):
            iov.iov_base = address
        count = len(remote)
        got = _READV(self.pid, self._local, count, remote, count, 0)
        if got != self._total:
            errno = ctypes.get_errno()
            raise OSError(errno, f"AsyncSAM: the worker could not read the lent batch from the trainer (pid "
                                 f"{self.pid}) with process_vm_readv: {got} of {self._total} bytes, "
                                 f"{os.strerror(errno) if errno else 'no error code'}")


__all__ = ["MAX_LENT", "BatchPuller", "LendingDesk", "allow_reader", "available", "lendable", "probe", "read_own",
           "revoke_reader"]
