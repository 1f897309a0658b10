"""A transparent training-dataloader wrapper that reads a few batches ahead.

``ascent_data="next"`` needs, during step t, the first micro-batch of step t+1. Lightning does not
prefetch sized dataloaders, so :class:`AsyncSAMStrategy` wraps the training dataloader (and only
that one) in :class:`LookaheadLoader` through ``Strategy.process_dataloader``. The wrapper yields
exactly the batches, in exactly the order, of the loader it wraps; it only fetches them
``depth`` batches earlier. Attribute reads (``sampler``, ``batch_size``, ``dataset``...) reach the
wrapped loader, so Lightning's sampler-epoch bookkeeping keeps working.

The lookahead stops at the end of an epoch: the last step of an epoch has no "next" batch.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any


class LookaheadLoader:
    """Iterate ``loader`` while keeping the next ``depth`` batches in hand.

    Args:
        loader: any iterable of batches (usually a ``DataLoader``).
        depth: how many batches past the current one :meth:`peek` can see.

    Example::

        >>> loader = LookaheadLoader([10, 11, 12], depth=1)
        >>> it = iter(loader)
        >>> next(it), loader.peek(1)
        (10, 11)
        >>> next(it), next(it), loader.peek(1)
        (11, 12, None)
    """

    def __init__(self, loader: Iterable[Any], depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"LookaheadLoader: depth must be >= 1, got {depth}")
        self.__dict__["_loader"] = loader
        self.__dict__["_depth"] = depth
        self.__dict__["upcoming"] = deque()  # the batches read ahead, in order (see peek)
        # The wrapper's own time, in ms: from the wrapped loader's answer to the batch's hand-over
        # (the generator's switches around it cannot be timed from inside). A one-number cell, a
        # running total that the strategy reads in place (no call) on logging steps, and that
        # take_added_ms reads and resets when the lookahead retires.
        self.__dict__["timer"] = array("d", [0.0])

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._loader)
        queue: deque = deque(islice(it, self._depth))  # the first batches, read ahead
        self.__dict__["upcoming"] = queue
        append, popleft, timer = queue.append, queue.popleft, self.timer
        # The steady state, a few lines a batch (this runs at every step): one batch in, one out.
        for batch in it:
            start = time.perf_counter()  # from here on, the wrapper's own time (the loader's is not)
            append(batch)
            batch = popleft()
            timer[0] += (time.perf_counter() - start) * 1e3
            yield batch
        while queue:  # the end of the epoch: the batches in hand, nothing left to read
            yield popleft()

    def peek(self, k: int) -> Any:
        """The batch ``k`` positions after the one last yielded, or None past the end of the epoch."""
        queue = self.upcoming
        return queue[k - 1] if 1 <= k <= len(queue) else None

    def take_added_ms(self) -> float:
        """The time, in ms, that the lookahead itself added to the batches since the last call."""
        timer = self.timer
        added, timer[0] = timer[0], 0.0
        return added

    def __len__(self) -> int:
        return len(self._loader)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        loader = self.__dict__.get("_loader")
        if loader is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(loader, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # e.g. Lightning's `worker_init_fn` must land on the real DataLoader.
        setattr(self._loader, name, value)
