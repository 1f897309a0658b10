"""The worker's side of a step's data: ``w_t`` into the replica, its gradient out, the batch rebuilt.

The worker's own work around its forward and backward is off the trainer's thread, but not free:
with b' = b it decides whether the trainer waits, and on a machine whose cores share a clock or
caches every microsecond the worker computes slows the trainer's core too. So the data moves as
the trainer's do (:mod:`lightning_asyncsam.ascent.flat_params`), one operation per dtype:

* the replica's trainable parameters live in one flat buffer per dtype, laid out as the prefix of
  the published ``w_t`` (:class:`~lightning_asyncsam.ascent.buffers.FlatTensors`), so reading
  ``w_t`` is one copy per dtype, plus one for the other mirrored tensors (frozen parameters,
  buffers) when the trainer rewrote them (``FlatTensors.rest_version``) or the replica changed its
  copies; with live weights the copy reads the trainer's own flat buffers, which it did not copy
  out (the trainer waits for the worker's post before it writes them again);
* their gradients accumulate straight into one flat buffer per dtype: a leaf's existing ``.grad``
  is added to in place (autograd's ``AccumulateGrad``; DDP's ``gradient_as_bucket_view`` relies on
  the same), so the gradient leaves in one multiplication per dtype that is Eq. 3's scale
  ``rho / ||g||`` itself, and ``||g||`` is one norm per dtype.

On the digits recipe's CNN (eleven tensors) this replaced foreach copies each way, a foreach norm
and a foreach scale with a handful of operations: the worker's step (``asyncsam/ascent_ms``) fell
by 83 us, 2.17 to 2.11 ms, paired over six interleaved fits on this project's 2-core VM. A replica
in ``channels_last`` (:mod:`lightning_asyncsam.ascent.memory_format`) keeps its flat buffers, each
parameter's segment in its own memory order, and its gradients with the same strides: zeroing,
the norm and the scale stay one operation per dtype, while ``w_t`` in and e out, in the trainer's
layout, are one foreach copy each. A replica whose parameters cannot be flattened (shared
storages), or whose own code moves them, keeps the per-tensor path; a gradient that its code
swaps out of the flat buffer (a ``zero_grad`` between forward and backward) is delivered from
where autograd left it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import TreeSpec, tree_unflatten

from lightning_asyncsam.ascent.buffers import FlatTensors, read_batch
from lightning_asyncsam.ascent.flat_params import FlatParameters
from lightning_asyncsam.functional import EPS


_VERSION = attrgetter("_version")


class ReplicaIO:
    """Moves ``w_t`` into the replica's tensors and its gradient out, one operation per dtype where it can.

    Args:
        mirror: the replica's mirrored tensors, in the order of ``weights`` (the trainable ones first).
        trainable: the replica's trainable parameters, in the order of the gradient buffers.
        weights: the published ``w_t`` (shared).
        grads_layout: a gradient buffer (shared), for its layout.
        live: the trainer's own flat parameter buffers (shared, laid out as ``grads_layout``), to
            read the trainable parameters' ``w_t`` from instead of ``weights``; None: ``weights``.

    Example::

        >>> net = torch.nn.Linear(2, 1)
        >>> params = list(net.parameters())
        >>> weights, grads = FlatTensors([p.detach() + 1 for p in params]), FlatTensors(params)
        >>> io = ReplicaIO(params, params, weights, grads)
        >>> io.load(weights); io.zero_grads()
        >>> net(torch.ones(1, 2)).sum().backward()
        >>> round(io.deliver(grads, rho=None), 4)  # ||(1, 1, 1)||: d/dw and d/db, g itself into grads
        1.7321
        >>> [v.tolist() for v in grads.views()]
        [[[1.0, 1.0]], [1.0]]
    """

    def __init__(self, mirror: Sequence[Tensor], trainable: Sequence[Tensor], weights: FlatTensors,
                 grads_layout: FlatTensors, live: Sequence[Tensor] | None = None) -> None:
        self._mirror = list(mirror)
        self._trainable = list(trainable)
        with torch.no_grad():
            for p in self._trainable:
                # The trainer's parameters were views of its own flat buffers when they were pickled:
                # the replica's share one storage, which FlatParameters leaves alone.
                if p.is_contiguous() and p.untyped_storage().nbytes() != p.numel() * p.element_size():
                    p.data = p.data.clone()
        self._flat = FlatParameters(self._trainable, dense=True)
        # The parameters' segments are in another order than w_t's and e's (channels_last): those
        # two cross in one foreach copy each, between the tensors.
        self._permuted = self._flat.permuted
        count = len(self._trainable)
        self._count = count
        self._live = list(live) if live is not None else None
        # The live buffers as one view per trainable parameter (the per-tensor path reads those).
        self._live_views = grads_layout.views_of(self._live) if self._live is not None else []
        self._grad_flats: list[Tensor] = []
        self._grad_views: list[Tensor] = []
        if self._flat.active:
            self._weight_prefix = self._live if self._live is not None else weights.prefix_flats(count)
            self._rest_views = weights.views()[count:]
            self._rest_mirror = self._mirror[count:]
            self._rest_seen = -1.0  # the rest_version last copied: none yet
            self._rest_versions: list[int] = []  # the copies' version counters just after that copy
            device = self._trainable[0].device
            if self._permuted:
                self._weight_views = self._live_views if self._live is not None else weights.views()[:count]
                self._grad_flats = [torch.zeros_like(f) for f in self._flat.flats]
                by_dtype = {f.dtype: g for f, g in zip(self._flat.flats, self._grad_flats)}
                self._grad_views = [by_dtype[p.dtype].as_strided(p.shape, p.stride(), p.storage_offset())
                                    for p in self._trainable]  # the parameters' own strides
                # e goes to the host buffers: in one foreach call from the CPU, tensor by tensor from a GPU.
                self._host_replica = device.type == "cpu"
            else:
                self._grad_flats, self._grad_views = grads_layout.private_like(device)
            with torch.no_grad():
                for p, g in zip(self._trainable, self._grad_views):
                    p.grad = g  # autograd adds into it in place (see the module's docstring)

    @property
    def live(self) -> bool:
        """Whether ``w_t`` of the trainable parameters is read from the trainer's own buffers."""
        return self._live is not None

    def stop_live(self, weights: FlatTensors) -> None:
        """Read ``w_t`` from ``weights`` from now on: the trainer's parameters left its buffers."""
        self._live, self._live_views = None, []
        if self.flat:
            self._weight_prefix = weights.prefix_flats(self._count)
            self._weight_views = weights.views()[:self._count]

    @property
    def permuted(self) -> bool:
        """Whether the flat buffers hold a parameter in another order than ``w_t``'s (``channels_last``)."""
        return self.flat and self._permuted

    @property
    def flat(self) -> bool:
        """Whether the parameters and gradients live in flat buffers (else: the per-tensor path)."""
        return bool(self._grad_flats)

    @torch.no_grad()
    def load(self, weights: FlatTensors) -> None:
        """Copy the published ``w_t`` into the replica."""
        if self.flat and not self._flat.intact():  # the replica's code moved its parameters: per tensor from now on
            self._grad_flats, self._grad_views = [], []
        if not self.flat:
            weights.copy_to(self._mirror)
            for p, w in zip(self._trainable, self._live_views):  # live: the trainable ones where they live
                p.copy_(w)
            return
        if self._permuted:
            torch._foreach_copy_(self._trainable, self._weight_views)
        else:
            for flat, w in zip(self._flat.flats, self._weight_prefix):
                flat.copy_(w)
        if self._rest_mirror:
            # The other mirrored tensors (frozen parameters, buffers): only when the trainer rewrote
            # them, or the replica's own code changed its copies (their version counters moved).
            version = weights.rest_version()
            if version != self._rest_seen or list(map(_VERSION, self._rest_mirror)) != self._rest_versions:
                torch._foreach_copy_(self._rest_mirror, self._rest_views)
                self._rest_seen = version
                self._rest_versions = list(map(_VERSION, self._rest_mirror))

    def zero_grads(self) -> None:
        """Clear the gradients before the backward pass."""
        if self.flat:
            for p, g in zip(self._trainable, self._grad_views):
                if p.grad is not g:  # set to None (a zero_grad in the replica's code) or replaced
                    p.grad = g
            for g in self._grad_flats:
                g.zero_()
        else:
            for p in self._trainable:
                p.grad = None

    @torch.no_grad()
    def deliver(self, out: FlatTensors, rho: float | None) -> float:
        """Write the gradient g into ``out`` (``e = rho * g / ||g||`` of Eq. 3 when ``rho`` is set and ||g|| finite).

        Returns:
            ||g||, the global 2-norm over every trainable parameter.
        """
        if not self.flat or any(p.grad is not g for p, g in zip(self._trainable, self._grad_views)):
            # Per tensor: no flat buffers, or the replica's own code swapped a gradient out of them
            # (a zero_grad between forward and backward): the gradients where autograd left them.
            grad = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._trainable]
            out.copy_from(grad)
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grad, 2.0))).item()
            if rho is not None and math.isfinite(norm):
                torch._foreach_mul_(out.device_flats(), rho / (norm + EPS))
            return norm
        flats = self._grad_flats
        if len(flats) == 1:
            norm = torch.linalg.vector_norm(flats[0]).item()
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).double() for g in flats])).item()
        scale = rho / (norm + EPS) if rho is not None and math.isfinite(norm) else None
        if self._permuted:  # into the trainer's layout, tensor by tensor, in one call where it can
            if scale is not None:
                for g in flats:
                    g.mul_(scale)
            views = out.views()
            if self._host_replica:
                torch._foreach_copy_(views, self._grad_views)
            else:
                for target, g in zip(views, self._grad_views):
                    target.copy_(g)
            return norm
        for target, g in zip(out.device_flats(), flats):
            if scale is None:
                target.copy_(g)
            elif target.device == g.device:
                torch.mul(g, scale, out=target)
            else:  # a CUDA replica: scale on its device, one transfer
                target.copy_(g.mul_(scale))
        return norm


class BatchReader:
    """Rebuilds the first ``n`` samples of a :class:`~lightning_asyncsam.ascent.buffers.BatchSlot`'s batch (worker side).

    On a CPU the rebuilt tensors are views of the shared slot, sliced once per (layout, n); a
    tensor or a flat tuple, list or dict of them is rebuilt without a pytree walk.

    Example::

        >>> from lightning_asyncsam.ascent.buffers import BatchSlot
        >>> slot = BatchSlot(); slot.write((torch.arange(3.0), torch.tensor([7, 8, 9])), n=2)
        True
        >>> BatchReader().read(slot.layout, 2, torch.device("cpu"))
        (tensor([0., 1.]), tensor([7, 8]))
    """

    def __init__(self) -> None:
        self._layout: Any = None  # held, so that its id is never another layout's
        self._n = -1
        self._leaves: list[Any] = []
        self._build: Any = None

    def read(self, layout: tuple[TreeSpec, list[Any], list[Tensor | None]], n: int, device: torch.device) -> Any:
        spec, constants, buffers = layout
        if device.type != "cpu":  # a copy to the device per step, as the data changes
            return read_batch(layout, n, device)
        if layout is not self._layout or n != self._n:
            self._layout, self._n = layout, n
            self._leaves = [c if b is None else b[:n] for c, b in zip(constants, buffers)]
            self._build = _builder(spec)
        return self._build(self._leaves)


def _builder(spec: TreeSpec) -> Any:
    """A function of the leaves that rebuilds ``spec``'s container: a tensor, a flat tuple, list or dict, else pytree's."""
    if spec.is_leaf():
        return lambda leaves: leaves[0]
    kind = spec.type
    flat = all(child.is_leaf() for child in spec.children())
    if kind in (tuple, list) and flat:
        return tuple if kind is tuple else list
    if kind is dict and flat:
        keys = list(spec.context)
        return lambda leaves: dict(zip(keys, leaves))
    return lambda leaves: tree_unflatten(leaves, spec)


__all__ = ["BatchReader", "ReplicaIO"]
