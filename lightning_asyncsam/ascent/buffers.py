"""Shared-memory buffers through which the main process and the ascent worker exchange tensors.

They are allocated once, before the worker starts, and handed to it at spawn time (torch passes
shared storage as file descriptors). After that, a training step moves no tensor through a pipe
and pickles nothing: the main process copies into these buffers and the worker copies out of them
(the step's few numbers go through :mod:`lightning_asyncsam.ascent.mailbox`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from lightning_asyncsam.ascent.lent_batch import MAX_LENT, LendingDesk


REST_REFRESH_STEPS = 50  # flat_writer writes the unchanged rest at least this often (see there)
# A batch of at most this many bytes is copied into the slot whole when the worker needs only its
# first b' < b samples: a slice per leaf costs a few microseconds in the middle of a step, more than
# copying the rest of a small batch (the digits recipe's, 8 KB, under "auto" or with b' < b).
WHOLE_COPY_BYTES = 64 * 1024
_VERSION = attrgetter("_version")


@dataclass(frozen=True)
class _Slot:
    group: int
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class FlatTensors:
    """A list of tensors laid out in a few flat shared-memory buffers, one per dtype.

    ``views()`` returns tensors shaped like the originals that alias the flat storage, so a single
    ``torch._foreach_copy_`` publishes all of them.

    Args:
        like: tensors giving the shapes and dtypes (their values are copied in).

    Example::

        >>> flat = FlatTensors([torch.ones(2, 2), torch.zeros(3, dtype=torch.int64)])
        >>> [tuple(v.shape) for v in flat.views()]
        [(2, 2), (3,)]
        >>> flat.views()[0].is_shared()
        True
    """

    def __init__(self, like: Sequence[Tensor]) -> None:
        dtypes: list[torch.dtype] = []
        slots: list[_Slot] = []
        sizes: list[int] = []
        for t in like:
            if t.dtype not in dtypes:
                dtypes.append(t.dtype)
                sizes.append(0)
            g = dtypes.index(t.dtype)
            slot = _Slot(g, sizes[g], tuple(t.shape))
            sizes[g] += slot.numel
            slots.append(slot)
        self._slots = slots
        self._flats = [torch.zeros(max(n, 1), dtype=d).share_memory_() for d, n in zip(dtypes, sizes)]
        self._views: list[Tensor] | None = None
        self._pinned = False
        self._staging: list[Tensor] | None = None  # flat copies on the main device, see stage()
        self._staging_views: list[Tensor] = []
        # Counts the writes of the tensors past a flat_writer's prefix (shared: the reader skips them
        # while it has not moved, see rest_version).
        self._rest_writes = torch.zeros(1, dtype=torch.float64).share_memory_()
        if like:
            self.copy_from(like)

    def _views_of(self, flats: Sequence[Tensor]) -> list[Tensor]:
        return [flats[s.group][s.offset : s.offset + s.numel].view(s.shape) for s in self._slots]

    def views_of(self, flats: Sequence[Tensor]) -> list[Tensor]:
        """Views shaped like the tensors, of other flat buffers laid out as these (one per dtype)."""
        return self._views_of(flats)

    def views(self) -> list[Tensor]:
        if self._views is None:
            self._views = self._views_of(self._flats)
        return self._views

    @torch.no_grad()
    def copy_from(self, tensors: Sequence[Tensor]) -> None:
        """Write ``tensors`` into the buffers (device-to-host where they live on a GPU)."""
        if not self._slots:
            return
        tensors = list(tensors)
        if self._staging is not None and tensors[0].device == self._staging[0].device:
            # One fused gather on the device, then one transfer per dtype instead of one per tensor.
            torch._foreach_copy_(self._staging_views, tensors)
            for flat, staged in zip(self._flats, self._staging):
                flat.copy_(staged, non_blocking=self._pinned)
        else:
            torch._foreach_copy_(self.views(), tensors, non_blocking=self._pinned)
        self._rest_writes += 1

    def flat_writer(self, flats: Sequence[Tensor], count: int, rest: Sequence[Tensor],
                    live: bool = False) -> Callable[[], object]:
        """A call with no arguments that writes the first ``count`` tensors from ``flats`` and the others from ``rest``.

        ``flats`` hold those ``count`` tensors laid out as here (one per dtype, in the order of
        their dtypes' first appearance): each is one copy, however many tensors it holds. Each call
        copies the sources' current values.

        Built once, it costs each step only the copies: for parameters in one flat buffer on a CPU
        (the common case), it is the tensor's own ``copy_`` bound to its source, one C call with no
        Python frame. A Python line costs about a tenth of a microsecond cold, mid-step, and this
        runs every step.

        The ``rest`` (parameters outside the optimizers, buffers) are copied only when one of them
        changed since the last write: a frozen backbone would otherwise cross every step, its whole
        size (on a GPU, device to host). A change is what moves a tensor's version counter (any
        in-place operation on it, ``load_state_dict``, an optimizer's or an EMA's update) or its
        address (``.data`` rebound to a new tensor); writes through ``.data`` in place, which
        autograd does not see either, are caught by a full write every :data:`REST_REFRESH_STEPS`
        calls. Checking costs two C-level passes over the rest's tensors, no Python line per tensor.

        With ``live``, the worker reads those ``count`` tensors from ``flats`` themselves (shared
        memory): only the rest is written.

        Example::

            >>> flat, source = FlatTensors([torch.zeros(2), torch.zeros(1)]), torch.arange(3.0)
            >>> write = flat.flat_writer([source], count=2, rest=[])
            >>> _ = source.add_(1.0)
            >>> _ = write()
            >>> [v.tolist() for v in flat.views()]
            [[1.0, 2.0], [3.0]]
            >>> flat = FlatTensors([torch.zeros(2), torch.zeros(3), torch.zeros(1)])
            >>> _ = flat.flat_writer([torch.arange(5.0)], count=2, rest=[torch.tensor([9.0])])()
            >>> [v.tolist() for v in flat.views()]
            [[0.0, 1.0], [2.0, 3.0, 4.0], [9.0]]
        """
        staged = self._staging is not None and flats[0].device == self._staging[0].device
        views = self._staging_views if staged else self.views()
        prefixes = self._prefixes_of(self._staging if staged else self._flats, count)  # type: ignore[arg-type]
        flats, rest = list(flats), list(rest)
        rest_targets = views[count:]
        if live:
            if staged:
                raise ValueError("FlatTensors.flat_writer: live weights are read from host memory, not staged")
            prefixes, flats = [], []
            if not rest:
                return _nothing
        elif not staged and not rest and len(prefixes) == 1 and prefixes[0].device.type == "cpu":
            return partial(prefixes[0].copy_, flats[0])
        # A CPU runs a foreach call as a loop of copies, and its extra dispatch costs microseconds
        # when it runs cold, mid-step (3 more for one 96 KB copy on this project's VM); a GPU fuses them.
        fused = prefixes[0].device.type != "cpu" if prefixes else False
        pinned = self._pinned
        # From the staging copy to the host: everything when the rest was written, else the prefixes.
        host_all = list(zip(self._flats, self._staging or []))
        host_prefixes = list(zip(self._prefixes_of(self._flats, count), prefixes)) if staged else []
        # The rest (frozen parameters, buffers) as last written: their version counters and addresses.
        seen: list[Any] = [None, None, 0]
        rest_writes = self._rest_writes

        def write() -> None:
            # Autograd off where a source may require grad (one of ``rest``: a parameter outside the
            # optimizers), by the switch itself: torch.no_grad()'s context manager costs several
            # Python calls more, every step. The flats never require grad.
            grad = bool(rest) and torch.is_grad_enabled()
            if grad:
                torch._C._set_grad_enabled(False)
            fresh = False
            try:
                if fused:
                    torch._foreach_copy_(prefixes, flats)
                else:
                    for target, source in zip(prefixes, flats):
                        target.copy_(source)
                if rest:
                    # Unchanged since the last write (read in C, no Python line per tensor): not copied.
                    versions, pointers = list(map(_VERSION, rest)), list(map(Tensor.data_ptr, rest))
                    seen[2] += 1
                    if versions != seen[0] or pointers != seen[1] or seen[2] >= REST_REFRESH_STEPS:
                        torch._foreach_copy_(rest_targets, rest)
                        seen[:] = versions, pointers, 0
                        fresh = True
            finally:
                if grad:
                    torch._C._set_grad_enabled(True)
            if staged:
                for flat, staging in host_all if fresh else host_prefixes:
                    flat.copy_(staging, non_blocking=pinned)
            if fresh:
                rest_writes.add_(1)  # in place, once the values are there: the step's semaphore orders both

        return write

    def prefix_flats(self, count: int) -> list[Tensor]:
        """The part of each flat that holds the first ``count`` tensors, on the main device (staging, else host)."""
        return self._prefixes_of(self.device_flats(), count)

    def _prefixes_of(self, flats: Sequence[Tensor], count: int) -> list[Tensor]:
        sizes = [0] * len(self._flats)
        for slot in self._slots[:count]:
            sizes[slot.group] += slot.numel
        return [f[:n] for f, n in zip(flats, sizes) if n]

    def stage(self, device: torch.device | str, share_with: FlatTensors | None = None) -> None:
        """Keep a flat copy of the buffers on ``device`` for :meth:`copy_from` and :meth:`to_device`.

        Args:
            device: the main process's device.
            share_with: another ``FlatTensors`` of the same layout whose staging copy this one
                reuses (the two gradient buffers are never on the device at the same time).
        """
        if share_with is not None and share_with._staging is not None:
            self._staging = share_with._staging
        else:
            self._staging = [torch.empty_like(f, device=device) for f in self._flats]
        self._staging_views = self._views_of(self._staging)

    def to_device(self) -> list[Tensor]:
        """The buffers' values on the staging device, as views of one flat copy per dtype.

        The views stay valid (and are overwritten) until the next call; without :meth:`stage`
        the host views themselves are returned.

        Example::

            >>> flat = FlatTensors([torch.ones(2), torch.zeros(3)])
            >>> flat.stage("cpu")
            >>> flat.views()[1].fill_(5.0) is not None
            True
            >>> [v.tolist() for v in flat.to_device()]
            [[1.0, 1.0], [5.0, 5.0, 5.0]]
        """
        # No torch.no_grad() here: these buffers never require grad, and the context costs microseconds.
        if self._staging is None:
            return self.views()
        for staged, flat in zip(self._staging, self._flats):
            staged.copy_(flat, non_blocking=self._pinned)
        return self._staging_views

    def on_device(self) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`to_device` and :meth:`device_flats` in one call: (the views, the flats they alias)."""
        if self._staging is None:  # the host buffers themselves: nothing to copy
            return self._views if self._views is not None else self.views(), self._flats
        return self.to_device(), self._staging

    def private_like(self, device: torch.device | str) -> tuple[list[Tensor], list[Tensor]]:
        """New flat buffers of this layout on ``device``, not shared, zeroed: (the flats, their views).

        Example::

            >>> flats, views = FlatTensors([torch.ones(2), torch.ones(1, 3)]).private_like("cpu")
            >>> [f.numel() for f in flats], [tuple(v.shape) for v in views]
            ([5], [(2,), (1, 3)])
        """
        flats = [torch.zeros_like(f, device=device) for f in self._flats]
        return flats, self._views_of(flats)

    def device_views(self) -> list[Tensor]:
        """The views of what :meth:`copy_from` last wrote, on the device it came from (the staging copy, else the host views)."""
        return self.views() if self._staging is None else self._staging_views

    def device_flats(self) -> list[Tensor]:
        """The flat tensors that :meth:`to_device`'s views alias: one kernel per dtype rewrites them all."""
        return self._flats if self._staging is None else self._staging

    @torch.no_grad()
    def copy_to(self, tensors: Sequence[Tensor]) -> None:
        """Write the buffers into ``tensors`` (host-to-device where they live on a GPU)."""
        if self._slots:
            torch._foreach_copy_(list(tensors), self.views(), non_blocking=self._pinned)

    def flat(self) -> list[Tensor]:
        """Plain (non-shared) copies of the flat buffers, for checkpoints."""
        return [f.clone() for f in self._flats]

    def load_flat(self, flats: Sequence[Tensor]) -> None:
        if len(flats) != len(self._flats) or any(a.shape != b.shape for a, b in zip(flats, self._flats)):
            raise ValueError(
                "ascent state in the checkpoint does not match this model: "
                f"got buffers of shapes {[tuple(f.shape) for f in flats]}, "
                f"expected {[tuple(f.shape) for f in self._flats]}"
            )
        for dst, src in zip(self._flats, flats):
            dst.copy_(src)

    def pin(self, device: torch.device | str, share_with: FlatTensors | None = None) -> None:
        """Prepare fast transfers to and from ``device``, a GPU (main process only).

        Page-locks the buffers so that the copies run asynchronously (the memory stays shared
        with the worker: CUDA registers the existing pages instead of allocating new pinned ones),
        and stages them on the device (see :meth:`stage`).
        """
        self.stage(device, share_with)
        if self._pinned or not torch.cuda.is_available():
            return
        cudart = torch.cuda.cudart()
        for f in self._flats:
            err = cudart.cudaHostRegister(f.data_ptr(), f.numel() * f.element_size(), 0)
            if int(err) != 0:
                return
        self._pinned = True

    def unpin(self) -> None:
        self._staging, self._staging_views = None, []
        if self._pinned:
            cudart = torch.cuda.cudart()
            for f in self._flats:
                cudart.cudaHostUnregister(f.data_ptr())
            self._pinned = False

    def rest_version(self) -> float:
        """How many times the tensors past a :meth:`flat_writer`'s prefix were written (:meth:`copy_from` counts too).

        A reader that copies them out (the worker's replica) skips them while this has not moved.
        """
        return float(self._rest_writes[0])

    def __getstate__(self) -> dict[str, Any]:
        # Views are rebuilt on the other side: pickling them would detach them from the flat storage.
        return {"_slots": self._slots, "_flats": self._flats, "_views": None, "_pinned": False, "_staging": None,
                "_staging_views": [], "_rest_writes": self._rest_writes}


class BatchSlot:
    """Shared buffers shaped like the first ``capacity`` samples of a training batch.

    A batch is any pytree (tensor, tuple, list, dict) of tensors and other objects. Tensors whose
    first dimension is the batch size get a shared buffer; everything else travels in the layout,
    which is pickled only when it changes (a new shape, dtype, structure or type of leaf). New
    values of the other leaves alone (a batch's file names, a scalar tensor) keep the layout: they
    travel by themselves (:attr:`constants_changed`), without the buffers.

    Per step, a batch that is a tensor, or a tuple, list or dict of tensors and plain values
    (strings, numbers, a tuple of file names: kept whole, one leaf each) costs no pytree walk: its
    leaves are the batch's own values, and its structure key is its type and length (and a dict's
    keys, in order). Deeper batches take pytree's walk. A batch of tensors with another number of
    samples but the same per-sample shapes (an epoch's short last batch, and the full one after it)
    keeps that path too. Where b' < b and the batch is small (:data:`WHOLE_COPY_BYTES`), the whole
    batch is copied, not a slice of each leaf: the worker reads the first :attr:`n` rows either way.

    A batch may also be *lent* (``write(..., lend=True)``, where :attr:`desk` is set): its tensors'
    addresses go to the worker, which reads their rows into the buffers itself, and the trainer
    copies nothing (:mod:`lightning_asyncsam.ascent.lent_batch`; :attr:`lent` says how many
    tensors). Only a batch shaped like the last, every leaf a contiguous CPU tensor of a real dtype
    with a buffer, is lent; any other is copied.

    Args:
        capacity: the number of samples to make room for at first; it grows to the largest batch seen
            (the descent batch size b), so a changing b' never reallocates.

    Example::

        >>> slot = BatchSlot()
        >>> slot.write((torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2])), n=2)
        True
        >>> slot.size, slot.n, slot.write((torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64)), n=5)
        (3, 2, False)
        >>> slot.n
        3
    """

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, capacity)
        self._key: Any = None
        self._buffers: list[Tensor | None] = []
        self.layout: tuple[TreeSpec, list[Any], list[Tensor | None]] | None = None
        self._targets: list[Tensor | None] = []  # views of the buffers' first _targets_n rows
        self._targets_n = -1
        # Views of the buffers' first _whole_size rows, where a small batch is copied whole (see
        # WHOLE_COPY_BYTES); _whole_size is -1 where it is not.
        self._whole: list[Tensor] = []
        self._whole_size = -1
        # The last write, for the next one's O(1) check: (type, n asked for, size, [(dtype, shape) per
        # tensor leaf, None per plain value], a dict's keys, whether every leaf is a batched tensor),
        # kept where the batch is a tensor or a flat tuple, list or dict; None otherwise.
        self._last: tuple[type, int, int, list[Any], tuple[Any, ...] | None, bool] | None = None
        self.size = 0  # samples in the batch last written
        self.n = 0     # samples of it copied: min(n, size)
        self.constants_changed = False  # the last write kept the layout but changed its non-buffer leaves
        # Where the worker can read the trainer's memory: the shared addresses of a lent batch (set
        # by the AscentWorker); None: every batch is copied. lent: the tensors the last write lent.
        self.desk: LendingDesk | None = None
        self.lent = 0
        self._lend_layout = False  # the last layout can be lent: at most MAX_LENT leaves, batched, of real dtypes

    @staticmethod
    def _flatten(batch: Any) -> tuple[list[Any], Any]:
        """The leaves of ``batch`` and a key for its structure (a TreeSpec only off the fast path)."""
        if isinstance(batch, Tensor):
            return [batch], Tensor
        kind = type(batch)
        # One level deep: tensors and plain values (a tuple of file names is one leaf, not one per name).
        if (kind is tuple or kind is list) and all(isinstance(x, Tensor) or _plain_value(x) for x in batch):
            return list(batch), (kind, len(batch))
        if kind is dict and all(isinstance(x, Tensor) or _plain_value(x) for x in batch.values()):
            return list(batch.values()), (dict, tuple(batch))  # pytree's order too: the values as inserted
        return tree_flatten(batch)

    @staticmethod
    def batch_size(batch: Any) -> int:
        """The number of samples in ``batch``: the first dimension of its first tensor."""
        for leaf in BatchSlot._flatten(batch)[0]:
            if isinstance(leaf, Tensor) and leaf.dim() > 0:
                return int(leaf.shape[0])
        raise ValueError(
            "AsyncSAM could not find the batch size: the training batch has no tensor with a batch dimension"
        )

    def write(self, batch: Any, n: int, lend: bool = False) -> bool:
        """Copy the first ``n`` samples of ``batch`` into the buffers (all of them if it has fewer), or lend them.

        Args:
            batch: the batch.
            n: the samples the worker reads.
            lend: lend the batch where it can (see the class's docstring): the caller then keeps
                it alive, unchanged, until the worker has read it.

        Returns:
            True when the layout changed, so that the caller must send ``self.layout`` to the worker.
        """
        self.constants_changed = False
        self.lent = 0
        kind = type(batch)
        keys = None
        if kind is tuple or kind is list:
            plain = batch
        elif kind is Tensor:
            plain = (batch,)
        elif kind is dict:
            plain, keys = tuple(batch.values()), tuple(batch)
        else:
            plain = None
        last = self._last
        if plain is not None and last is not None and last[0] is kind and last[1] == n and keys == last[4]:
            # The common case, a batch shaped like the last one: no walk, no key, cached slices.
            if last[5]:
                # Every leaf a tensor with a buffer: the check (dtype, shape, requires_grad per leaf)
                # and the copies each run as one line, their loops in C (mid-step, a Python line costs
                # a fraction of a microsecond).
                try:
                    same = list(map(_signature, plain)) == last[3]
                except AttributeError:  # a leaf that is not a tensor
                    same = False
                if same or self._resized(plain, last):  # (an epoch's short last batch, or the full one after it)
                    desk = self.desk
                    # Contiguity alone per step: the leaves' being on the CPU is in the signature,
                    # which the layout's lending requires.
                    if lend and desk is not None and self._lend_layout and all(map(Tensor.is_contiguous, plain)):
                        desk.write(plain)  # the worker reads the first n rows of each, from these addresses
                        self.lent = len(plain)
                        return False
                    rows, size = self.n, self.size
                    if rows == size:
                        list(map(Tensor.copy_, self._targets, plain))
                    elif self._whole_size == size:  # small: whole, rather than a slice per leaf
                        list(map(Tensor.copy_, self._whole, plain))
                    else:
                        list(map(Tensor.copy_, self._targets, [x[:rows] for x in plain]))
                    return False
            elif len(plain) == len(last[3]) and self._same_shape_new_values(plain, last[3]):
                rows = self.n
                for x, dst in zip(plain, self._targets):
                    if dst is not None:
                        dst.copy_(x if rows == last[2] else x[:rows])
                return False
        self._last = None
        requested = n
        leaves, structure = self._flatten(batch)
        size = self.batch_size(leaves)
        self.capacity = max(self.capacity, size)
        key = (structure, self.capacity, tuple(self._leaf_key(x, size) for x in leaves))
        changed = key != self._key
        if changed:
            # The container's TreeSpec for the leaves above: pytree's own, or one level deep.
            spec = structure if isinstance(structure, TreeSpec) else tree_flatten(batch, is_leaf=lambda v: v is not batch)[1]
            buffers: list[Tensor | None] = []
            constants: list[Any] = []
            for x in leaves:
                if isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == size:
                    buffers.append(torch.empty((self.capacity, *x.shape[1:]), dtype=x.dtype).share_memory_())
                    constants.append(None)
                else:
                    buffers.append(None)
                    constants.append(x.detach().cpu() if isinstance(x, Tensor) else x)
            self._key, self._buffers = key, buffers
            self._whole_size = -1  # views of the old buffers
            self.layout = (spec, constants, buffers)
        else:
            # The same layout, but its other leaves (a batch's file names, a scalar) may hold new values:
            # those alone travel (constants_changed), not the buffers again.
            spec, constants, buffers = self.layout  # type: ignore[misc]
            fresh = [None if b is not None else x.detach().cpu() if isinstance(x, Tensor) else x
                     for x, b in zip(leaves, buffers)]
            if not _same_constants(fresh, constants):
                self.layout = (spec, fresh, buffers)
                self.constants_changed = True
        n = min(n, size)
        if changed or n != self._targets_n:
            self._slice_targets(n)
        for x, dst in zip(leaves, self._targets):
            if dst is not None:
                if x.requires_grad:
                    x = x.detach()
                dst.copy_(x if n == size else x[:n])
        if plain is not None and all(isinstance(x, Tensor) or _plain_value(x) for x in plain):
            batched = all(b is not None for b in self._buffers)
            # Every leaf batched: each one's _signature; otherwise (dtype, shape) per tensor, None per plain value.
            metas = ([(x.dtype, x.shape, False, x.is_cpu) for x in plain] if batched else
                     [(x.dtype, x.shape) if isinstance(x, Tensor) else None for x in plain])
            self._last = (kind, requested, size, metas, keys, batched)
            self._lend_layout = batched and len(plain) <= MAX_LENT and not any(
                x.dtype.is_complex or not x.is_cpu for x in plain)
        self._sized(size, n)
        return changed

    def _resized(self, plain: Sequence[Any], last: tuple[Any, ...]) -> bool:
        """The fast path's check for tensors of the last dtypes and per-sample shapes, in another number.

        An epoch's last batch is often short (``drop_last=False``), and the next batch is full again:
        both fit the buffers (up to :attr:`capacity` samples), so only the sample count, the rows to
        copy and their slices change, not the layout. True if so, with those updated.
        """
        size = -1
        metas = []
        if len(plain) != len(last[3]):
            return False
        try:
            for x, (dtype, shape, _, cpu) in zip(plain, last[3]):
                xs = x.shape
                if (x.dtype is not dtype or xs[1:] != shape[1:] or x.requires_grad or x.is_cpu is not cpu
                        or (size >= 0 and xs[0] != size)):
                    return False
                size = xs[0]
                metas.append((dtype, xs, False, cpu))
        except (AttributeError, IndexError):  # a leaf that is not a tensor, or a 0-dim one
            return False
        if not 0 < size <= self.capacity:
            return False
        n = min(last[1], size)
        if n != self._targets_n:
            self._slice_targets(n)
        self._last = (last[0], last[1], size, metas, last[4], last[5])
        self._sized(size, n)
        return True

    def _sized(self, size: int, n: int) -> None:
        """Record the batch's ``size`` and the ``n`` rows the worker reads; the whole-batch views where they pay."""
        self.size, self.n = size, n
        buffers = self._buffers
        whole = (n < size and bool(buffers) and all(b is not None for b in buffers)
                 and sum(b.numel() // b.shape[0] * b.element_size() for b in buffers) * size <= WHOLE_COPY_BYTES)
        if not whole:
            self._whole, self._whole_size = [], -1
        elif self._whole_size != size:
            self._whole, self._whole_size = [b[:size] for b in buffers], size  # type: ignore[index]

    def _slice_targets(self, n: int) -> None:
        """The buffers' first ``n`` rows, where writes go: sliced once per (layout, n), not per step."""
        self._targets = [None if buf is None else buf[:n] for buf in self._buffers]
        self._targets_n = n

    def _same_shape_new_values(self, plain: Sequence[Any], metas: list[Any]) -> bool:
        """The fast path's check where some leaves are not batched tensors: their new values, in the layout.

        True if every tensor has the last shape and dtype and every other leaf its type (then new
        values of those leaves replace the layout's, and :attr:`constants_changed` says so).
        """
        spec, constants, buffers = self.layout  # type: ignore[misc]
        fresh: list[Any] | None = None
        for i, (x, meta, buf, old) in enumerate(zip(plain, metas, buffers, constants)):
            if meta is None:  # a plain value
                if x is old:
                    continue
                if type(x) is not type(old) or not _plain_value(x):
                    return False
                value = x
            else:
                if not isinstance(x, Tensor) or x.dtype is not meta[0] or x.shape != meta[1] or x.requires_grad:
                    return False
                if buf is not None:  # batched: copied below
                    continue
                value = x
            if _same_leaf(value, old):
                continue
            if isinstance(value, Tensor):
                value = value.detach().cpu()
            if fresh is None:
                fresh = list(constants)
            fresh[i] = value
        if fresh is not None:
            self.layout = (spec, fresh, buffers)
            self.constants_changed = True
        return True

    @staticmethod
    def _leaf_key(x: Any, size: int) -> Any:
        if isinstance(x, Tensor):
            batched = x.dim() > 0 and x.shape[0] == size
            return (x.dtype, x.shape[1:] if batched else x.shape, batched)
        return ("c", type(x))  # its value travels apart (constants_changed): a new file name is no new layout


_PLAIN = (str, bytes, int, float, bool, type(None))
# What the batch slot's fast path compares, per tensor (is_cpu: a lent leaf's, checked in the same C loop).
_signature = attrgetter("dtype", "shape", "requires_grad", "is_cpu")


def _nothing() -> None:
    """A writer with nothing to write (live weights, no rest)."""


def _plain_value(x: Any) -> bool:
    """A leaf kept whole in a batch's layout: a scalar or string, or a tuple or list of them (file names, ids)."""
    if isinstance(x, _PLAIN):
        return True
    kind = type(x)
    return (kind is tuple or kind is list) and all(isinstance(v, _PLAIN) for v in x)


def _same_constants(a: list[Any], b: list[Any]) -> bool:
    """Whether two lists of a layout's non-buffer leaves hold the same values."""
    return all(map(_same_leaf, a, b))


def _same_leaf(x: Any, y: Any) -> bool:
    """Whether a non-buffer leaf holds the value it held (tensors by content, on one device)."""
    if x is y:
        return True
    if isinstance(x, Tensor) or isinstance(y, Tensor):
        return (isinstance(x, Tensor) and isinstance(y, Tensor) and x.dtype == y.dtype and x.shape == y.shape
                and x.device == y.device and torch.equal(x, y))
    try:
        return type(x) is type(y) and bool(x == y)
    except Exception:  # noqa: BLE001 - a value without a plain answer to == (an array): a new value
        return False


def read_batch(layout: tuple[TreeSpec, list[Any], list[Tensor | None]], n: int, device: torch.device) -> Any:
    """Rebuild the first ``n`` samples of a batch from a :class:`BatchSlot` layout (worker side)."""
    spec, constants, buffers = layout
    leaves = [c if b is None else b[:n].to(device) for c, b in zip(constants, buffers)]
    return tree_unflatten(leaves, spec)
