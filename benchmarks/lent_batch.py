"""What the batch hand-over costs the trainer's thread, copied into the slot or lent, by the batch's size (issue 11).

Until the tenth round the trainer copied the first b' samples of every ascent batch into the shared
batch slot, on its own thread, every step: a cost that grows with the data. A lent batch
(:mod:`lightning_asyncsam.ascent.lent_batch`) costs the trainer a few addresses written to shared
memory, whatever its size; the worker reads the rows itself (``process_vm_readv``). This times,
in one process and in a tight loop (warm caches: inside a fit each call costs more, see
``in_place.py``), the trainer's side both ways, ``BatchSlot.write`` with ``lend=False`` and with
``lend=True``, and the worker's side of a lent batch, ``BatchPuller.pull`` (here reading this
process's own memory, as the worker reads the trainer's), for the recipes' batch shapes.

Commands:
    python benchmarks/lent_batch.py
    python benchmarks/lent_batch.py --name lent_batch_cpu
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    if not lent_batch.available():
        raise SystemExit("process_vm_readv is Linux's: nothing to compare here")
    torch.set_num_threads(1)
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
