"""Which CPU cores the ascent worker and the trainer's process run on (Linux ``sched_setaffinity``).

When the main process computes on the CPU too, the worker hides behind the descent only if the two
never share a core. Leaving that to the OS scheduler is not enough: it migrates the main thread
onto the worker's core and back, and every other runnable task preempts one of them.
``benchmarks/concurrency.py`` measures what a busy worker costs the main process either way; on
this project's 2-core VM the difference was within the noise, so pinning is opt-in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def available_cores() -> list[int] | None:
    """The cores this process may run on, or None where the OS has no affinity API (macOS, Windows)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


def split_cores(cores: Sequence[int], local_rank: int, ranks: int, threads: int) -> tuple[list[int], list[int]] | None:
    """This rank's share of ``cores``, split into (trainer's cores, worker's cores).

    The ranks of a node take equal, disjoint shares. In its share the worker takes the last
    ``min(threads, share - 1)`` cores and the trainer keeps the rest, at least one. None when the
    share has fewer than two cores: then there is nothing to split.

    Example::

        >>> split_cores(range(8), local_rank=0, ranks=1, threads=3)
        ([0, 1, 2, 3, 4], [5, 6, 7])
        >>> split_cores(range(8), local_rank=1, ranks=2, threads=8)
        ([4], [5, 6, 7])
        >>> split_cores([0, 1], local_rank=1, ranks=2, threads=1) is None
        True
    """
    cores = sorted(cores)
    per_rank = len(cores) // max(1, ranks)
    share = cores[local_rank * per_rank : (local_rank + 1) * per_rank]
    if len(share) < 2:
        return None
    n = min(max(1, threads), len(share) - 1)
    return share[:-n], share[-n:]


class ProcessAffinity:
    """Confines every thread of this process to some cores, and gives each back what it had.

    Linux sets affinity per thread, and a new thread inherits its creator's: after :meth:`confine`,
    threads and processes started from a confined thread (torch's intra-op pool, data-loader workers)
    stay on the trainer's cores. Where the OS has no affinity API, both methods do nothing.

    Example::

        >>> pinning = ProcessAffinity()
        >>> cores = available_cores()
        >>> pinning.confine(cores[:1]) if cores else None
        >>> pinning.restore()
        >>> available_cores() == cores
        True
    """

    def __init__(self) -> None:
        self._saved: dict[int, set[int]] = {}

    def confine(self, cores: Sequence[int]) -> None:
        if not hasattr(os, "sched_setaffinity"):
            return
        for tid in _threads():
            try:
                self._saved.setdefault(tid, os.sched_getaffinity(tid))
                os.sched_setaffinity(tid, cores)
            except OSError:  # the thread ended in between
                self._saved.pop(tid, None)

    def restore(self) -> None:
        saved, self._saved = self._saved, {}
        for tid, cores in saved.items():
            try:
                os.sched_setaffinity(tid, cores)
            except OSError:
                pass


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]  # the calling thread
