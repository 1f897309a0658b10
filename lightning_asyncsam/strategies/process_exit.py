"""A clean exit for a rank whose gloo process group outlives training.

A rank sometimes died with SIGABRT ("terminate called without an active exception") after its run
had finished. The cause, reproduced with plain ``torch.distributed`` (no Lightning, no SAM):

1. After ``work.wait()`` returns, the gloo thread that ran the collective still has to drop its
   reference to the work, and with it to the work's tensors. When the tensor was created in Python
   (Lightning's ``reduce_boolean_decision`` makes one at every epoch end), dropping the last
   reference frees a Python object, which needs the GIL.
2. If that thread is descheduled until the interpreter has begun to finalize, Python ends the thread
   when it asks for the GIL. The thread is inside a ``noexcept`` C++ destructor, so the C++ runtime
   calls ``std::terminate``.
3. ``destroy_process_group`` does not prevent it: once ``DistributedDataParallel`` has wrapped a
   model, the group is never freed, and gloo's threads stay alive until the process exits, whatever
   ``destroy_process_group``, ``shutdown`` or ``abort`` says (measured with torch 2.14).

So before the interpreter finalizes, :func:`quiesce_gloo_threads` gives gloo's threads the GIL and
the CPU until none of them is running, and only then destroys the group.
"""

from __future__ import annotations

import atexit
import os
import time

from lightning.fabric.utilities.distributed import _destroy_dist_connection

_GLOO_WORKER = "pt_gloo_runloop"  # the name torch gives gloo's collective threads


def _busy_gloo_threads() -> int:
    """How many of gloo's collective threads are running or waiting for a CPU (state R or D)."""
    busy = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:  # not Linux: nothing to inspect
        return 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != _GLOO_WORKER:
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended in between
            continue
        if stat[stat.rfind(")") + 2] in "RD":
            busy += 1
    return busy


def quiesce_gloo_threads(idle_samples: int = 5, interval_s: float = 0.002, timeout_s: float = 2.0) -> bool:
    """Wait, with the GIL released, until gloo's threads have been idle for ``idle_samples`` samples in a row.

    A thread that is finishing a collective is running (or waits for the GIL, which it gets while
    this sleeps); an idle one sleeps on its queue. Bounded by ``timeout_s``: an exit is never held up
    for longer.

    Returns:
        Whether the threads went idle in time (True as well where there are none).

    Example::

        >>> quiesce_gloo_threads()  # no process group in this process: nothing to wait for
        True
    """
    deadline = time.monotonic() + timeout_s
    idle = 0
    while idle < idle_samples:
        if time.monotonic() > deadline:
            return False
        idle = idle + 1 if _busy_gloo_threads() == 0 else 0
        time.sleep(interval_s)
    return True


def _release_process_group() -> None:
    quiesce_gloo_threads()
    _destroy_dist_connection()


def release_process_group_at_exit() -> None:
    """Quiesce gloo's threads and destroy the default process group at exit, before the interpreter finalizes.

    Safe to call any number of times: the handler is registered once.
    """
    atexit.unregister(_release_process_group)
    atexit.register(_release_process_group)


__all__ = ["quiesce_gloo_threads", "release_process_group_at_exit"]
