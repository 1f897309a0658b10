"""How often a gloo rank aborts at exit, with and without our exit handler (issue 10, item 3).

Plain torch.distributed, no Lightning: two spawned ranks wrap a model in DistributedDataParallel
(after which the gloo group is never freed), start an all_reduce on a Python tensor and drop it, so
that a gloo thread releases the tensor's last reference while the rank is exiting. This widens the
window that a Lightning run hits now and then, after the all_reduce of reduce_boolean_decision.

    python benchmarks/ddp_exit.py none 12         # exit at once
    python benchmarks/ddp_exit.py barrier 12      # a barrier first
    python benchmarks/ddp_exit.py destroy 12      # destroy_process_group at exit
    python benchmarks/ddp_exit.py ours 12         # barrier + release_process_group_at_exit (the strategies' teardown)

Prints how many runs had a rank that did not exit with code 0 (SIGABRT: -6, with "terminate called
without an active exception" on stderr).
"""

from __future__ import annotations

import atexit
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = ("none", "barrier", "destroy", "ours")


def _rank(rank: int, mode: str, port: int) -> None:
    # every mode pays this import before the collective, so that no mode gets extra time
    from lightning_asyncsam.strategies.process_exit import release_process_group_at_exit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    x = torch.ones(2_000_000)
    work = dist.all_reduce(x, async_op=True)
    del x, work  # a gloo thread now holds the tensor's last reference
    if mode in ("barrier", "ours"):
        dist.barrier()
    if mode == "destroy":
        atexit.register(dist.destroy_process_group)
    if mode == "ours":
        release_process_group_at_exit()


def main(mode: str, runs: int, port: int = 29700) -> int:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed: use one of {MODES}")
    aborted = 0
    for i in range(runs):
        ctx = mp.start_processes(_rank, args=(mode, port + i), nprocs=2, start_method="spawn", join=False)
        for p in ctx.processes:
            p.join()
        aborted += any(p.exitcode != 0 for p in ctx.processes)
    print(f"{mode}: {aborted}/{runs} runs with a rank that did not exit 0", flush=True)
    return aborted


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
