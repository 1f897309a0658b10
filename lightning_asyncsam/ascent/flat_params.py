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
on several devices are left alone, and the strategy keeps its per-tensor path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class FlatParameters:
    """Moves ``params`` into one contiguous buffer per dtype (see the module's docstring).

    Args:
        params: the trainable parameters, in the order that the flat buffers follow.

    Example::

        >>> net = torch.nn.Linear(3, 2)
        >>> flat = FlatParameters(list(net.parameters()))
        >>> flat.active, [f.numel() for f in flat.flats]
        (True, [8])
        >>> flat.flats[0].add_(1.0) is not None and bool((net.bias >= -1).all())  # the same memory
        True
        >>> flat.release(); flat.active
        False
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self._params = list(params)
        self.flats: list[Tensor] = []
        # intact() in two public parts, for a caller that checks at every step without its frame:
        # ``anchor_ptr() == first``. first: where the first parameter's data starts while it lives in
        # the buffers (-1: it does not); anchor_ptr: that parameter's data_ptr, bound.
        self.first = -1
        self.anchor_ptr = (self._params[0] if self._params else torch.empty(0)).data_ptr
        if not _flattenable(self._params):
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
                    view = flat[offset:offset + n].view_as(p)
                    view.copy_(p)
                    p.data = view
                    offset += n
                self.flats.append(flat)
        self.first = self._params[0].data_ptr()

    @property
    def active(self) -> bool:
        """Whether the parameters live in :attr:`flats`."""
        return bool(self.flats)

    def intact(self) -> bool:
        """Whether they still do, checked in O(1): the first parameter still points into the buffers.

        ``module.to()`` and the like move every parameter, the first too, so they are caught;
        rebinding one parameter's ``.data`` in the middle of a fit is not supported.
        """
        return self.anchor_ptr() == self.first

    def release(self) -> None:
        """Give every parameter a storage of its own again (same values); :attr:`flats` empties."""
        if self.intact():
            with torch.no_grad():
                for p in self._params:
                    p.data = p.data.clone()
        self.flats = []
        self.first = -1


def _flattenable(params: Sequence[Tensor]) -> bool:
    """Contiguous, each with a storage of its own, all on one device: moving them changes nothing else."""
    if not params or len({p.device for p in params}) != 1:
        return False
    for p in params:
        if not p.is_contiguous() or p.storage_offset() != 0:
            return False
        if p.untyped_storage().nbytes() != p.numel() * p.element_size():
            return False
    return True


__all__ = ["FlatParameters"]
