"""What the batch hand-over costs the trainer's thread, copied into the slot or lent, by the batch's size (issue 11).

Until the tenth round the trainer copied the first b' samples of every ascent batch into the shared
batch slot, on its own thread, every step: a cost that grows with the data. A lent batch
(:mod:`lightning_asyncsam.ascent.lent_batch`) costs the trainer a few addresses written to shared
memory, whatever its size; the worker reads the rows itself (``process_vm_readv``). This times,
in one process and in a tight loop (warm caches: inside a fit each call costs more, see
``in_place.py``), the trainer's side both ways, ``BatchSlot.write`` with ``lend=False`` and with
``lend=True``, and the worker's side of a lent batch, ``BatchPuller.pull`` (here reading this
process's own memory, as the worker reads the trainer's), for the recipes' batch shapes.

With ``--fits N`` it compares instead, inside fits of the digits recipe (``overhead.fit``: b = b' = 32,
trainer and worker at one thread each), lent batches against copied ones in the same package (the
worker's start-up probe made to fail, as where it cannot read the trainer's memory), beside SGD:
N rounds of the three arms, their order rotating, in one process; per pair, the difference in
``asyncsam/overhead_ms`` and in the median step.

Commands:
    python benchmarks/lent_batch.py
    python benchmarks/lent_batch.py --name lent_batch_cpu
    python benchmarks/lent_batch.py --fits 16 --name lent_batch_fits
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import environment, environment_markdown, write_results  # noqa: E402

from lightning_asyncsam.ascent import lent_batch  # noqa: E402
from lightning_asyncsam.ascent.buffers import BatchSlot  # noqa: E402
from lightning_asyncsam.ascent.lent_batch import BatchPuller, LendingDesk  # noqa: E402

#: (name, b, per-sample shape, b'): the recipes' inputs (recipes/*.yaml), b' = b / 4 beside the digits' b' = b.
SHAPES = [
    ("digits (recipes/digits.yaml)", 32, (1, 8, 8), 32),
    ("CIFAR-10, ResNet-20", 128, (3, 32, 32), 32),
    ("Tiny-ImageNet, ResNet-50", 128, (3, 64, 64), 32),
    ("ImageNet-sized, 224 px", 256, (3, 224, 224), 64),
]


def _median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(b: int, shape: tuple[int, ...], n: int, repeats: int) -> dict[str, float]:
    batch = (torch.randn(b, *shape), torch.randint(0, 10, (b,)))
    copied, lent = BatchSlot(b), BatchSlot(b)
    lent.desk = LendingDesk()
    for slot, lend in ((copied, False), (lent, True)):
        slot.write(batch, n, lend)  # the layout (copied either way)
        slot.write(batch, n, lend)
    assert copied.lent == 0 and lent.lent == 2
    puller = BatchPuller(os.getpid())
    buffers = lent.layout[2]  # type: ignore[index]
    row = {
        "copy_us": _median_us(lambda: copied.write(batch, n), repeats),
        "lend_us": _median_us(lambda: lent.write(batch, n, True), repeats),
        "pull_us": _median_us(lambda: puller.pull(buffers, n, lent.desk), repeats),  # type: ignore[arg-type]
        "bytes": n * (batch[0][0].numel() * 4 + 8),
    }
    assert torch.equal(buffers[0][:n], batch[0][:n]) and torch.equal(buffers[1][:n], batch[1][:n])
    return row


def in_fits(rounds: int, epochs: int = 6) -> tuple[dict[str, list[dict[str, float]]], list[str]]:
    """Lent against copied batches inside digits fits, beside SGD (see the module's docstring)."""
    import tempfile

    import overhead

    from lightning_asyncsam.ascent import worker as worker_module

    real_probe = worker_module.probe
    arms = ["sgd", "lent", "copied"]
    fits: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    try:
        for r in range(rounds):
            for arm in arms[r % 3:] + arms[:r % 3]:
                worker_module.probe = real_probe if arm == "lent" else (lambda *args: False)
                with tempfile.TemporaryDirectory() as d:
                    clock = overhead.fit("sgd" if arm == "sgd" else "asyncsam", epochs, r, d)
                fits[arm].append({
                    "epoch_s": overhead.steady(clock.epochs),
                    "step_s": overhead.steady_step(clock.step_s),
                    "overhead_ms": statistics.mean(o / s for o, s in zip(clock.overhead_ms[1:], clock.steps[1:])),
                })
    finally:
        worker_module.probe = real_probe
    sgd = fits["sgd"]
    lines = [f"Digits recipe fits (b = b' = 32, trainer and worker at 1 thread each), {rounds} rounds of SGD, lent "
             f"and copied batches (the same package, the worker's probe made to fail), the order rotating; "
             f"{epochs} epochs a fit, epochs 2..N. Medians over rounds; paired: lent minus copied, per round.", "",
             "| arm | steady epoch | median step | x SGD (epoch, paired) | `asyncsam/overhead_ms` |", "|---|---|---|---|---|"]
    for arm in arms:
        v = fits[arm]
        ratio = statistics.median(x["epoch_s"] / s["epoch_s"] for x, s in zip(v, sgd))
        lines.append(f"| {arm} | {statistics.median(x['epoch_s'] for x in v) * 1e3:.1f} ms | "
                     f"{statistics.median(x['step_s'] for x in v) * 1e3:.3f} ms | {ratio:.3f} | "
                     f"{statistics.median(x['overhead_ms'] for x in v) * 1e3:.1f} us |")
    d_over = [(a["overhead_ms"] - b["overhead_ms"]) * 1e3 for a, b in zip(fits["lent"], fits["copied"])]
    d_step = [(a["step_s"] - b["step_s"]) * 1e6 for a, b in zip(fits["lent"], fits["copied"])]
    lines += ["", f"Lent minus copied, paired: `overhead_ms` {statistics.median(d_over):+.1f} us median "
              f"({statistics.mean(d_over):+.1f} mean, lower in {sum(d < 0 for d in d_over)}/{rounds}); median step "
              f"{statistics.median(d_step):+.0f} us median ({statistics.mean(d_step):+.0f} mean)."]
    return fits, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--fits", type=int, default=0, metavar="ROUNDS", help="compare inside digits fits instead")
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    if not lent_batch.available():
        raise SystemExit("process_vm_readv is Linux's: nothing to compare here")
    torch.set_num_threads(1)
    if args.fits:
        fits, lines = in_fits(args.fits)
        env = environment()
        lines += ["", environment_markdown(env)]
        print("\n".join(lines))
        if args.name:
            write_results(args.name, {"fits": fits, "environment": env}, "\n".join(lines) + "\n")
        return
    rows = []
    for name, b, shape, n in SHAPES:
        repeats = args.repeats if b * n < 10_000 else max(10, args.repeats // 20)
        rows.append({"batch": name, "b": b, "sample": list(shape), "ascent_batch_size": n,
                     **measure(b, shape, n, repeats)})
    lines = [
        "The trainer's side of the batch hand-over, in a tight loop (one thread, warm caches; mid-step each call "
        "costs more), copied into the slot or lent; and the worker's side of a lent batch (`BatchPuller.pull`, one "
        "`process_vm_readv`). Medians.",
        "",
        "| batch | b | b' | bytes read by the worker | trainer: copy | trainer: lend | worker: pull |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['b']} | {r['ascent_batch_size']} | {r['bytes'] / 1e6:.3f} MB | "
                     f"{r['copy_us']:.1f} us | {r['lend_us']:.1f} us | {r['pull_us']:.1f} us |")
    env = environment()
    lines += ["", environment_markdown(env)]
    print("\n".join(lines))
    if args.name:
        write_results(args.name, {"rows": rows, "environment": env, "repeats": args.repeats}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
