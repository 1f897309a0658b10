"""The trainable parameters as views of one contiguous buffer per dtype, for the duration of a fit.

Perturbing, restoring and publishing the weights are three passes over every trainable tensor per
step. On a CPU a ``torch._foreach_*`` call is a loop over its tensors inside PyTorch's dispatcher,
a dispatch per tensor (GPUs fuse them, CPUs do not), and in the middle of a training step each of
those costs a few microseconds: for a small model, more than the arithmetic. With the parameters
laid out in one buffer per dtype, each pass is one operation per dtype, whatever the number of
tensors (the cached layout of issue 11).

The parameters stay the same ``Parameter`` objects (the optimizer, DDP and the user's references
keep working); only their storage moves into the buffer, with ``Parameter.data``, as apex's and
Megatron's contiguous parameter buffers do. :meth:`FlatParameters.release` gives each parameter a
storage of its own again at the end of the fit, so that what the user saves afterwards (for
example with safetensors, which refuses tensors that share a storage) sees independent tensors.
Parameters that are not contiguous (``channels_last``), that already share a storage (tied
weights are one parameter, and fine; ZeroRedundancyOptimizer's bucket views are not), or that live
on several devices are left alone, and the strategy keeps its per-tensor path. The ascent worker's
replica, whose layout is its own (:mod:`lightning_asyncsam.ascent.memory_format`), asks for
``dense`` buffers instead: a ``channels_last`` parameter then holds its segment in its own memory
order, so that passes over all the values (zeroing, a norm, a scale) are still one operation per
dtype, while a copy from or to tensors in another layout goes per tensor (:attr:`permuted`).

With ``twins``, each buffer has a twin of the same size, and :attr:`FlatParameters.swap` trades
their memory in O(1) (``UntypedStorage._swap_data_ptr_``, what inductor's CUDA-graph trees use to
re-point every tensor of a storage): the perturbation writes ``w + e`` into the twins and swaps,
and the restore is the swap back, exact and without a pass over the weights (issue 11). A
parameter, and any view of it, sees the swapped memory; its version counter does not move, and
nothing that autograd saved in between is touched by it.

:meth:`FlatParameters.share` moves the buffers into shared memory, so that the ascent worker can
read ``w_t`` where it lives instead of the trainer copying it out every step (the "live weights"
of :mod:`lightning_asyncsam.ascent.worker`): with twins, the memory that holds ``w_t`` is not
written between the publication and the restore, the perturbed forward and backward running on
the twin.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: ``UntypedStorage._swap_data_ptr_`` where this torch has it (without: no twins, the restore copies).
SWAP_DATA: Callable[[torch.UntypedStorage, torch.UntypedStorage], None] | None = getattr(
    torch.UntypedStorage, "_swap_data_ptr_", None)


class FlatParameters:
    """Moves ``params`` into one contiguous buffer per dtype (see the module's docstring).

    Args:
        params: the trainable parameters, in the order that the flat buffers follow.
        twins: also keep a twin of each buffer, for :attr:`swap` (where torch can swap storages).
        dense: also take parameters in ``channels_last``, each segment in its parameter's memory
            order (see :attr:`permuted`); otherwise only contiguous ones.

    Example::

        >>> net = torch.nn.Linear(3, 2)
        >>> flat = FlatParameters(list(net.parameters()))
        >>> flat.active, [f.numel() for f in flat.flats]
        (True, [8])
        >>> flat.flats[0].add_(1.0) is not None and bool((net.bias >= -1).all())  # the same memory
        True
        >>> flat.release(); flat.active
        False
        >>> flat = FlatParameters(list(net.parameters()), twins=True)
        >>> _ = torch.add(flat.flats[0], 1.0, out=flat.twins[0]); flat.swap()  # the parameters now see w + 1
        >>> flat.swap(); flat.release()  # and w again
    """

    def __init__(self, params: Sequence[Tensor], twins: bool = False, dense: bool = False) -> None:
        self._params = list(params)
        #: Whether a parameter's segment is in another order than its contiguous form (``dense`` only):
        #: a flat buffer then holds the values, but not in the order of a contiguous copy of them.
        self.permuted = False
        self.flats: list[Tensor] = []
        #: Same-sized twins of :attr:`flats` (empty without ``twins``), and :attr:`swap`: trades the
        #: memory of each buffer and its twin (a bound C call with no Python frame, for the hot path).
        self.twins: list[Tensor] = []
        self.swap: Callable[[], object] = _nothing
        self.swapped = False  # set by the caller, which knows whether it swapped an odd number of times
        # intact() in two public parts, for a caller that checks at every step without its frame:
        # ``anchor_ptr() == first``. first: where the first parameter's data starts while it lives in
        # the buffers (-1: it does not); anchor_ptr: that parameter's data_ptr, bound.
        self.first = -1
        self.anchor_ptr = (self._params[0] if self._params else torch.empty(0)).data_ptr
        if not _flattenable(self._params, dense):
            return
        groups: dict[torch.dtype, list[Tensor]] = {}
        for p in self._params:
            groups.setdefault(p.dtype, []).append(p)
        with torch.no_grad():
            for dtype, members in groups.items():
                flat = torch.empty(sum(p.numel() for p in members), dtype=dtype, device=members[0].device)
                offset = 0
                for p in members:
                    n = p.numel()
                    segment = flat[offset:offset + n]
                    if dense:  # its own strides (a channels_last weight with one input channel keeps them)
                        view = segment.as_strided(p.shape, p.stride())
                        self.permuted = self.permuted or not p.is_contiguous()
                    else:
                        view = segment.view_as(p)
                    view.copy_(p)
                    p.data = view
                    offset += n
                self.flats.append(flat)
        self.first = self._params[0].data_ptr()
        if twins and SWAP_DATA is not None and _swaps_both_ways(self.flats[0]):
            self.twins = [torch.empty_like(f) for f in self.flats]
            pairs = [(f.untyped_storage(), t.untyped_storage()) for f, t in zip(self.flats, self.twins)]
            # One dtype (the common case): the C method itself, bound; several: a loop in C over them.
            self.swap = (functools.partial(SWAP_DATA, *pairs[0]) if len(pairs) == 1 else
                         functools.partial(_swap_all, SWAP_DATA, [a for a, _ in pairs], [b for _, b in pairs]))

    @property
    def active(self) -> bool:
        """Whether the parameters live in :attr:`flats`."""
        return bool(self.flats)

    def share(self) -> bool:
        """Move the buffers (not the twins) into shared memory, for a worker process to read; False where it cannot.

        The parameters follow (they are views of the buffers' storages, which keep their identity);
        their data moves. False without buffers, off the CPU, or where shared memory has no room
        for them (torch raises: ``/dev/shm`` is full, 64 MB by default in a Docker container); the
        buffers then stay as they were, usable as before.
        """
        if not self.flats or self.flats[0].device.type != "cpu" or self.swapped:
            return False
        try:
            for f in self.flats:
                f.share_memory_()
        except RuntimeError:  # no room: those moved are still the same values, in shared memory
            return False
        finally:
            self.first = self._params[0].data_ptr()
        return True

    def intact(self) -> bool:
        """Whether they still do, checked in O(1): the first parameter still points into the buffers.

        ``module.to()`` and the like move every parameter, the first too, so they are caught;
        rebinding one parameter's ``.data`` in the middle of a fit is not supported.
        """
        return self.anchor_ptr() == self.first

    def release(self) -> None:
        """Give every parameter a storage of its own again (same values); :attr:`flats` empties."""
        if self.swapped:  # never left so by the strategy; a swap back is what the caller would have done
            self.swap()
            self.swapped = False
        if self.intact():
            with torch.no_grad():
                for p in self._params:
                    p.data = p.data.clone()
        self.flats = []
        self.twins = []
        self.swap = _nothing
        self.first = -1


def _swap_all(swap: Callable[[torch.UntypedStorage, torch.UntypedStorage], None],
              storages: list[torch.UntypedStorage], twins: list[torch.UntypedStorage]) -> None:
    for _ in map(swap, storages, twins):  # one C call per dtype
        pass


def _nothing() -> None:
    """No twins: nothing to swap."""


def _swaps_both_ways(like: Tensor) -> bool:
    """Whether this torch's private storage swap does what the twins rely on (checked once, on scratch tensors).

    ``_swap_data_ptr_`` is what inductor uses, not a public API: a release that changes it makes the
    strategy fall back to restoring by a copy rather than fail in the middle of a step.
    """
    assert SWAP_DATA is not None
    try:
        a, b = torch.zeros(2, dtype=like.dtype, device=like.device), torch.ones(2, dtype=like.dtype, device=like.device)
        view = a[1:]
        SWAP_DATA(a.untyped_storage(), b.untyped_storage())
        swapped = bool((a == 1).all()) and bool((b == 0).all()) and bool((view == 1).all())
        SWAP_DATA(a.untyped_storage(), b.untyped_storage())
        return swapped and bool((a == 0).all()) and bool((view == 0).all())
    except (RuntimeError, TypeError):
        return False


def _flattenable(params: Sequence[Tensor], dense: bool = False) -> bool:
    """Contiguous (or ``channels_last``, if ``dense``), each with a storage of its own, all on one device."""
    if not params or len({p.device for p in params}) != 1:
        return False
    for p in params:
        laid_out = p.is_contiguous() or (dense and p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))
        if not laid_out or p.storage_offset() != 0:
            return False
        if p.untyped_storage().nbytes() != p.numel() * p.element_size():
            return False
    return True


__all__ = ["FlatParameters"]
