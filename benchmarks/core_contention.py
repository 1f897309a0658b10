"""What the worker's core costs the trainer's: two small experiments behind the mailbox's design (issue 11).

1. **Data the other core wrote last.** A process fills a 96 KB buffer (the digits CNN's e or w_t),
   then the main process multiplies it in place: against the same multiplication on data of its
   own, hot and after a 16 MB sweep.
2. **A spinning or napping neighbour.** The main process times a fixed piece of tensor work while
   the other core is idle, while another process spins on ``sem_trywait`` (what a busy-waiting
   worker would do between steps), and while it polls between 50 µs naps (what ours does,
   ``lightning_asyncsam/ascent/mailbox.py``). On this project's VM the fixed work jumps between
   about 520 and 700 µs whatever the other core does: read several repetitions, not one.

Commands:
    python benchmarks/core_contention.py
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from typing import Any

import torch

N = 24058  # the digits CNN's trainable parameters


def _writer(buf: torch.Tensor, go: Any, done: Any, iterations: int) -> None:
    torch.set_num_threads(1)
    for i in range(iterations):
        go.wait()
        go.clear()
        buf.fill_(float(i))
        done.set()


def cross_core(iterations: int = 400) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    buf, local, sweep = torch.zeros(N).share_memory_(), torch.zeros(N), torch.randn(4_000_000)
    go, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_writer, args=(buf, go, done, iterations), daemon=True)
    proc.start()
    times: dict[str, list[int]] = {"other core wrote it": [], "hot, own": [], "own, after a 16 MB sweep": []}
    for _ in range(iterations):
        go.set()
        done.wait()
        done.clear()
        t = time.perf_counter_ns(); buf.mul_(0.5); times["other core wrote it"].append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns(); local.mul_(0.5); times["hot, own"].append(time.perf_counter_ns() - t)
        sweep.add_(1.0)
        t = time.perf_counter_ns(); local.mul_(0.5); times["own, after a 16 MB sweep"].append(time.perf_counter_ns() - t)
    proc.join(10)
    return {k: statistics.median(v) / 1e3 for k, v in times.items()}


def _spinner(sem: Any, until: float) -> None:
    while time.time() < until:
        sem.acquire(False)


def _napper(sem: Any, until: float) -> None:
    """What the worker does between steps (ascent/mailbox.py): poll, nap 50 microseconds."""
    while time.time() < until:
        sem.acquire(False)
        time.sleep(5e-5)


def _work() -> float:
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    times = []
    for _ in range(200):
        t = time.perf_counter()
        (a @ b).sum()
        torch.randn(50_000).mul_(2).add_(1)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def neighbours(repetitions: int = 3) -> list[dict[str, float]]:
    """The fixed work's time beside an idle core, a spinning process and a napping one, interleaved."""
    ctx = mp.get_context("spawn")
    sem = ctx.Semaphore(0)
    out = []
    for _ in range(repetitions):
        row = {"idle": _work()}
        for name, target in (("spinning", _spinner), ("napping", _napper)):
            proc = ctx.Process(target=target, args=(sem, time.time() + 8), daemon=True)
            proc.start()
            time.sleep(1.0)  # a spawned child imports torch first
            row[name] = _work()
            proc.terminate()
            proc.join(5)
        out.append(row)
    return out


def main() -> None:
    torch.set_num_threads(1)
    for name, us in cross_core().items():
        print(f"multiply 96 KB in place, {name:26s} {us:6.1f} us")
    for row in neighbours():
        print("fixed work: " + ", ".join(f"other core {k} {v:6.1f} us ({v / row['idle']:.2f}x)" for k, v in row.items()))


if __name__ == "__main__":
    main()
