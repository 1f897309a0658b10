"""How much the worker's activity on the other core slows the trainer, apart from AsyncSAM's own work.

``overhead.py`` compares AsyncSAM with SGD; the difference holds two things: the work that the
strategy adds to the trainer's thread (``asyncsam/overhead_ms`` counts it) and whatever the worker
process costs the trainer by running beside it (on a VM whose two vCPUs share a host's caches,
memory bus and clock, every microsecond the worker computes can slow the trainer's core). This
script separates them. In one process, interleaved (the order rotating every repetition), on the
digits recipe's setting (``overhead.fit``: b = 32, one thread each, validation off):

* ``sgd``: Lightning's own strategy;
* ``idle worker``: AsyncSAM with a worker patched to do nothing: it neither reads ``w_t`` nor
  computes, and delivers a zero perturbation at once. The trainer's thread does all its usual work
  (collect, publish, hand-over, perturb, restore, diagnostics); the worker only naps between steps;
* ``b' = 1`` and ``b' = 32``: the real worker, with a 1-sample and a b-sample ascent.

* ``SGD beside a napping process``: Lightning's own strategy, while a second process naps and
  polls a semaphore as the worker does between steps (:data:`~lightning_asyncsam.ascent.mailbox.NAP_S`),
  at the worker's priority.

``idle worker - sgd`` is the strategy's own work (compare ``asyncsam/overhead_ms``);
``b' = n - idle worker`` is what a computing worker costs the trainer; ``napping - sgd`` what a
worker's naps alone cost it. Each fit's figure is its
median step (batch start to batch start) over epochs 2..N; differences are paired by repetition.

Commands:
    python benchmarks/worker_interference.py                 # 12 repetitions of 6 epochs, ~3 min
    python benchmarks/worker_interference.py --repeats 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

try:
    from benchmarks._common import environment, environment_markdown, write_results
    from benchmarks.overhead import B, fit, steady_step
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import environment, environment_markdown, write_results
    from overhead import B, fit, steady_step

from lightning_asyncsam.ascent import mailbox, replica_io, worker

ARMS = ("sgd", "nap", "idle", "b1", f"b{B}")
LABELS = {"sgd": "SGD", "nap": "SGD beside a napping process", "idle": "AsyncSAM, idle worker",
          "b1": "AsyncSAM, b' = 1", f"b{B}": f"AsyncSAM, b' = {B}"}


@contextmanager
def idle_worker() -> Iterator[None]:
    """Patch the worker (before it forks or spawns: it inherits the patch) to read nothing and compute nothing.

    Its first delivery writes the zero gradient (so that e = 0: the trainer perturbs by nothing);
    after that it posts its result without touching the shared buffers.
    """
    load, deliver, loss = replica_io.ReplicaIO.load, replica_io.ReplicaIO.deliver, worker.ascent_loss
    delivered: dict[int, bool] = {}

    def lazy_deliver(self: replica_io.ReplicaIO, out: Any, rho: float | None) -> float:
        if id(out) not in delivered:  # each of the two gradient buffers once
            delivered[id(out)] = True
            return deliver(self, out, rho)
        return 0.0

    replica_io.ReplicaIO.load = lambda self, weights: None  # type: ignore[method-assign]
    replica_io.ReplicaIO.deliver = lazy_deliver  # type: ignore[method-assign]
    worker.ascent_loss = lambda module, batch, batch_idx: torch.zeros((), requires_grad=True)
    try:
        yield
    finally:
        replica_io.ReplicaIO.load, replica_io.ReplicaIO.deliver, worker.ascent_loss = load, deliver, loss


def _nap(work: Any, stop: Any) -> None:
    os.nice(10)  # the worker's default ascent_nice
    while not stop.is_set():
        time.sleep(mailbox.NAP_S)
        work.acquire(False)


@contextmanager
def napping_neighbour() -> Iterator[None]:
    """A process that does what the worker does between steps, and nothing else, for the duration."""
    ctx = mp.get_context("fork")
    work, stop = ctx.Semaphore(0), ctx.Event()
    proc = ctx.Process(target=_nap, args=(work, stop), daemon=True)
    proc.start()
    try:
        yield
    finally:
        stop.set()
        proc.join(5)


def one_fit(arm: str, epochs: int, seed: int, log_dir: str) -> dict[str, float]:
    if arm == "nap":
        with napping_neighbour():
            clock = fit("sgd", epochs, seed, log_dir)
    elif arm == "idle":
        with idle_worker():
            clock = fit("asyncsam", epochs, seed, log_dir, ascent_batch_size=B)
    else:
        clock = fit("sgd" if arm == "sgd" else "asyncsam", epochs, seed, log_dir,
                    ascent_batch_size=int(arm[1:]) if arm != "sgd" else B)
    steps = sum(clock.steps[1:])
    return {"median_step_ms": steady_step(clock.step_s) * 1e3,
            "overhead_ms_per_step": sum(clock.overhead_ms[1:]) / steps,
            "wait_ms_per_step": sum(clock.wait_ms[1:]) / steps}


def paired(runs: dict[str, list[dict[str, float]]], a: str, b: str, key: str = "median_step_ms") -> tuple[float, float, float]:
    diffs = sorted(x[key] - y[key] for x, y in zip(runs[a], runs[b]))
    return statistics.median(diffs), diffs[len(diffs) // 4], diffs[(3 * len(diffs)) // 4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=12, help="fits of each arm, interleaved")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per fit (the first is not counted)")
    parser.add_argument("--name", default="worker_interference_cpu", help="results/<name>.{json,md}")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 and --repeats >= 1")
    torch.set_num_threads(1)
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        fit("sgd", 2, 0, tmp)  # warm-up
        for r in range(args.repeats):
            for arm in ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]:
                runs[arm].append(one_fit(arm, args.epochs, r, tmp))
                print(f"repeat {r} {arm:5s} median step {runs[arm][-1]['median_step_ms']:.3f} ms", flush=True)

    med = {arm: statistics.median(run["median_step_ms"] for run in runs[arm]) for arm in ARMS}
    rows = []
    for arm in ARMS:
        cells = [LABELS[arm], f"{med[arm]:.3f} ms"]
        for base in ("sgd", "idle"):
            if arm in ("sgd", base) or (base == "idle" and arm in ("sgd", "nap")):
                cells.append("")
            else:
                m, lo, hi = paired(runs, arm, base)
                cells.append(f"{m * 1e3:+.0f} µs ({lo * 1e3:+.0f} to {hi * 1e3:+.0f})")
        over = "" if arm in ("sgd", "nap") else f"{statistics.median(r['overhead_ms_per_step'] for r in runs[arm]) * 1e3:.0f} µs"
        wait = "" if arm in ("sgd", "nap") else f"{statistics.median(r['wait_ms_per_step'] for r in runs[arm]) * 1e3:.0f} µs"
        rows.append("| " + " | ".join([*cells, over, wait]) + " |")
    env = environment()
    table = "\n".join([
        f"Digits recipe (digits_cnn, b = {B}), trainer and worker at 1 thread each; {args.repeats} repetitions of "
        f"{args.epochs} epochs, the arms interleaved. Median step: batch start to batch start over epochs 2..N of "
        "a fit, median over repetitions. Differences are paired by repetition: median (quartiles).",
        "",
        "| arm | median step | vs SGD | vs idle worker | `asyncsam/overhead_ms` | waiting per step |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        environment_markdown(env),
    ])
    print(table)
    summary = {arm: {"median_step_ms": med[arm]} for arm in ARMS}
    for arm in ARMS[1:]:
        summary[arm]["vs_sgd_ms"] = paired(runs, arm, "sgd")[0]
        if arm not in ("idle", "nap"):
            summary[arm]["vs_idle_ms"] = paired(runs, arm, "idle")[0]
    write_results(args.name, {"config": vars(args), "environment": env, "summary": summary, "runs": runs}, table)


if __name__ == "__main__":
    main()
