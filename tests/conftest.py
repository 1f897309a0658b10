"""Test-wide rules: every test runs on the CPU, and no test may leave a process or thread behind."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings

import pytest
import torch

try:  # tqdm's monitor thread would otherwise outlive the first test that shows a progress bar
    import tqdm

    tqdm.tqdm.monitor_interval = 0
except ImportError:  # pragma: no cover
    pass

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _children(pid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) child processes of ``pid``, read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z" and not any(s in cmd for s in _STDLIB_SERVICES):
            out.append((int(entry), cmd))
    return out


# Two services of the standard library's multiprocessing are started on first use and live, by
# design, until the interpreter exits: the resource tracker process (started with the first spawned
# child) and the resource sharer's thread (which hands shared-memory file descriptors to a child
# over a pipe). They belong to the interpreter, not to a test; anything else is a leak.
# Open MPI's singleton daemon `orted` is the same kind of thing: where mpi4py is installed,
# Lightning's MPIEnvironment.detect() initializes MPI at the first Trainer, which starts `orted`
# for the rest of the interpreter's life (seen on a GPU box), whatever the strategy.
_STDLIB_SERVICES = ("multiprocessing.resource_tracker", "orted --hnp")


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive() and not _is_resource_sharer(t)}


def _is_resource_sharer(t: threading.Thread) -> bool:
    from multiprocessing import resource_sharer

    sharer = getattr(resource_sharer, "_resource_sharer", None)
    return sharer is not None and t is getattr(sharer, "_thread", None)


@pytest.fixture(autouse=True)
def process_police():
    """Fail any test that leaves a child process or a thread running (the worker contract)."""
    threads_before = _threads()
    yield
    deadline = time.monotonic() + 10.0
    while True:
        children = _children(os.getpid())
        threads = _threads() - threads_before
        if not children and not threads:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid, _ in children:  # don't let one leak cascade into every later test
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    message = f"test left behind child processes {children} and threads {[t.name for t in threads]}"
    print(f"process police: {message}", file=sys.stderr, flush=True)  # seen even if a later test crashes
    pytest.fail(message)
