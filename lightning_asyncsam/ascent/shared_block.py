"""An object whose whole state is one shared tensor: it pickles as the tensor, and rebuilds its views.

A Process argument crosses to the worker by pickling; a shared tensor crosses as a handle to the
same memory, but the ctypes views onto it are addresses in one process. So each such object
(:class:`~lightning_asyncsam.ascent.hyperparameters.SharedHyperparameters`,
:class:`~lightning_asyncsam.ascent.shared_object.SharedObject`) pickles as its tensor alone and
rebuilds its views in :meth:`SharedBlock._attach` on either side.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


class SharedBlock:
    """Holds ``shared`` (a tensor in shared memory) and the process-local views that :meth:`_attach` makes of it.

    Example::

        >>> import ctypes, pickle, torch
        >>> class Counter(SharedBlock):
        ...     def _attach(self) -> None:
        ...         self.value = ctypes.c_double.from_address(self._shared.data_ptr())
        >>> c = Counter(torch.zeros(1, dtype=torch.float64).share_memory_())
        >>> c.value.value = 3.0
        >>> sorted(c.__getstate__())
        ['_shared']
    """

    def __init__(self, shared: Tensor) -> None:
        self._shared = shared
        self._attach()

    def __getstate__(self) -> dict[str, Any]:
        return {"_shared": self._shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._shared = state["_shared"]
        self._attach()

    def _attach(self) -> None:
        """Make the views of ``self._shared`` that this process uses (and reset process-local state)."""
        raise NotImplementedError


__all__ = ["SharedBlock"]
