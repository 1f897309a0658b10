"""A small picklable object in shared memory under a version count: what changes every step, without the pipe.

A batch's non-tensor leaves (file names, ids, captions) can change every step
(:attr:`~lightning_asyncsam.ascent.buffers.BatchSlot.constants_changed`). Sent through the pipe,
each step pays the pipe's pickler and its system calls on the trainer's thread; written here, it
pays ``pickle.dumps`` and one copy into memory that the worker already maps, and the worker reads it
once the step's semaphore says so (the version is written last, after the bytes). An object larger
than the buffer is not written (:meth:`SharedObject.put` says so), and the caller sends it through
the pipe instead.

Example::

    >>> box = SharedObject(capacity=256)
    >>> reader = SharedObject.__new__(SharedObject)
    >>> reader.__setstate__(box.__getstate__())  # the worker's copy: the same shared bytes
    >>> reader.changed(), box.put(["a.png", "b.png"]), reader.changed()
    (False, True, True)
    >>> reader.get(), reader.changed()
    (['a.png', 'b.png'], False)
    >>> box.put("x" * 1000)  # too large: the caller sends it through the pipe
    False
"""

from __future__ import annotations

import ctypes
import pickle
from typing import Any

import torch
from typing_extensions import override

from lightning_asyncsam.ascent.shared_block import SharedBlock

_HEADER = 16  # a float64 version, an int64 length


class SharedObject(SharedBlock):
    """One picklable object of up to ``capacity`` bytes, pickled into shared memory (see the module's docstring).

    Created in the main process before the worker starts and handed to it as a ``Process``
    argument, as :class:`~lightning_asyncsam.ascent.mailbox.Mailbox` is.

    Args:
        capacity: the largest pickle it holds, in bytes.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        super().__init__(torch.zeros(_HEADER + capacity, dtype=torch.uint8).share_memory_())

    @override
    def _attach(self) -> None:
        address = self._shared.data_ptr()
        self._address = address
        self._capacity = self._shared.numel() - _HEADER
        self._version = ctypes.c_double.from_address(address)
        self._length = ctypes.c_int64.from_address(address + 8)
        self._seen = self._version.value

    def put(self, obj: Any) -> bool:
        """Pickle ``obj`` into the buffer and count a new version; False (nothing written) if it does not fit."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > self._capacity:
            return False
        ctypes.memmove(self._address + _HEADER, data, len(data))
        self._length.value = len(data)
        self._version.value += 1.0  # last: the step's semaphore orders the bytes before the worker's read
        return True

    def changed(self) -> bool:
        """Whether a new version was put since the last :meth:`get` (or :meth:`mark_seen`)."""
        return self._version.value != self._seen

    def get(self) -> Any:
        """The object last put (and it counts as seen)."""
        self._seen = self._version.value
        return pickle.loads(ctypes.string_at(self._address + _HEADER, self._length.value))

    def mark_seen(self) -> None:
        """Count the current version as seen: the reader got the same object another way (a pipe message)."""
        self._seen = self._version.value


__all__ = ["SharedObject"]
