"""Where the trainer's per-step time goes, each function of the hot path timed inside a fit (issue 11).

A function that costs a microsecond in a tight loop costs five to ten in the middle of a training
step, where a forward and a backward have evicted its code and data: only timing it there says
where ``asyncsam/overhead_ms`` goes. This wraps each function of the hot path (below) in a timer,
runs AsyncSAM fits of the digits recipe (``overhead.fit``: b = 32, trainer and worker at one thread
each) and reports each function's time per step over epochs 2..N, and per call. A wrapper adds
about a microsecond of its own per call (a nested function's inclusive time holds its callees'
wrappers too), so compare rows of one run, or runs of one script, not with ``overhead_ms``.

Commands:
    python benchmarks/in_place.py                              # 3 fits of 5 epochs, b' = 32
    python benchmarks/in_place.py --ascent-batch-size 1 --name in_place_b1
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import overhead  # noqa: E402
from _common import environment, environment_markdown, write_results  # noqa: E402

from lightning_asyncsam.ascent.buffers import BatchSlot  # noqa: E402
from lightning_asyncsam.ascent.callback import AsyncSAMCallback  # noqa: E402
from lightning_asyncsam.ascent.mailbox import Mailbox  # noqa: E402
from lightning_asyncsam.ascent.worker import AscentWorker  # noqa: E402
from lightning_asyncsam.strategies.asyncsam import AsyncSAMStrategy  # noqa: E402

#: (class, method): the trainer's per-step path, outermost first.
HOT_PATH: list[tuple[type, str]] = [
    (AsyncSAMCallback, "synchronize"), (AscentWorker, "take"), (AsyncSAMStrategy, "next_step_batch"),
    (AsyncSAMStrategy, "publish"), (AscentWorker, "submit"), (BatchSlot, "write"), (AscentWorker, "_sync_trainer"),
    (Mailbox, "post_step"), (AsyncSAMStrategy, "_perturb"), (AsyncSAMStrategy, "_restore"),
    (AsyncSAMCallback, "after_closure"), (AsyncSAMCallback, "end_step"),
]


class _Timers:
    """Inclusive time and calls per wrapped function, counted only while :attr:`on` (epochs 2..N)."""

    def __init__(self) -> None:
        self.on = False
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.steps = 0

    def wrap(self, cls: type, name: str) -> Callable[[], None]:
        """Replace ``cls.name`` by a timed wrapper; returns the call that puts the original back."""
        original = cls.__dict__[name]
        label = f"{cls.__name__}.{name}"

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.on:
                    self.seconds[label] += time.perf_counter() - start
                    self.calls[label] += 1

        setattr(cls, name, timed)
        return lambda: setattr(cls, name, original)


class _Window(L.Callback):
    def __init__(self, timers: _Timers) -> None:
        self.timers = timers

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.timers.on = trainer.current_epoch >= 1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.timers.steps += self.timers.on

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.timers.on = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per fit (the first is not counted)")
    parser.add_argument("--ascent-batch-size", type=int, default=overhead.B)
    parser.add_argument("--name", default=None, help="results/<name>.{json,md}; none: print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    timers = _Timers()
    restore = [timers.wrap(cls, name) for cls, name in HOT_PATH]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for fit in range(args.fits):
                overhead.fit("asyncsam", args.epochs, fit, tmp, extra=[_Window(timers)],
                             ascent_batch_size=args.ascent_batch_size)
    finally:
        for undo in restore:
            undo()
    steps = max(1, timers.steps)
    rows = {label: {"us_per_step": timers.seconds[label] / steps * 1e6,
                    "us_per_call": timers.seconds[label] / max(1, timers.calls[label]) * 1e6,
                    "calls_per_step": timers.calls[label] / steps}
            for label in sorted(timers.seconds, key=lambda k: -timers.seconds[k])}
    env = environment(probe_cores=False)
    table = "\n".join([
        f"Each function of the trainer's hot path timed inside AsyncSAM fits of the digits recipe (b = 32, b' = "
        f"{args.ascent_batch_size}, trainer and worker at 1 thread each; {args.fits} fits of {args.epochs} epochs, "
        f"{steps} steps of epochs 2..N counted). Inclusive times: a function's row holds its callees' rows and "
        "their wrappers (about a microsecond a call each).",
        "",
        "| function | µs per step | µs per call | calls per step |",
        "|---|---|---|---|",
        *[f"| `{label}` | {r['us_per_step']:.1f} | {r['us_per_call']:.1f} | {r['calls_per_step']:.2f} |"
          for label, r in rows.items()],
        "",
        environment_markdown(env),
    ])
    print(table)
    if args.name:
        write_results(args.name, {"config": vars(args), "environment": env, "steps": steps, "functions": rows}, table)


if __name__ == "__main__":
    main()
