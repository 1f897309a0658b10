"""What AsyncSAM adds to the trainer's thread per step, against SGD, and whether its metric says so.

The digits recipe's setting (recipes/digits.yaml: ``digits_cnn``, b = 32, SGD with momentum, lr
0.05, cosine decay, ``log_every_n_steps=10``, a CSV logger), with the trainer and the worker at
one thread each (``torch.set_num_threads(1)`` here, ``ascent_threads=1``) and b' = b. SGD and
AsyncSAM are fitted side by side in ONE process, alternating (SGD, AsyncSAM, AsyncSAM, SGD, ...),
so that both share the machine's minute. A callback times every training epoch inside the fit;
validation is off, so an epoch is exactly its 45 training steps. Each fit's steady-state epoch is
the median of its epochs 2..N (epoch 1 holds the worker's start-up).

It reports, per algorithm, the median (and the range) over repetitions of those steady-state
epochs; the difference per step between AsyncSAM and SGD, in wall-clock and in the trainer
thread's CPU time (which a shared machine's other processes do not inflate), and how much of the
wall-clock difference was waiting for a late worker; and the mean of ``asyncsam/overhead_ms``,
the strategy's own account of what it adds to the trainer's thread.

Commands:
    python benchmarks/overhead.py                          # 5 repetitions of 8 epochs, ~2 min
    python benchmarks/overhead.py --repeats 9 --epochs 10
    python benchmarks/overhead.py --profile                # cProfile: Python calls per step, SGD vs AsyncSAM
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_asyncsam import AsyncSAMCallback, AsyncSAMStrategy
from lightning_asyncsam.app.classifier import Classifier
from lightning_asyncsam.app.data import DigitsDataModule
from lightning_asyncsam.app.models import digits_cnn

try:
    from benchmarks._common import environment, environment_markdown, write_results
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import environment, environment_markdown, write_results

B = 32  # recipes/digits.yaml: 1,437 training images / 32 = 45 steps an epoch (the last one short)


class EpochClock(L.Callback):
    """Per training epoch: wall-clock, the trainer thread's CPU time, and AsyncSAM's own totals.

    CPU time (``time.thread_time``) is what the trainer's thread computed, whoever else held the
    cores meanwhile: on a shared machine it measures the added work where wall-clock cannot.
    """

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.cpu: list[float] = []
        self.steps: list[int] = []
        self.overhead_ms: list[float] = []
        self.wait_ms: list[float] = []
        self._start = (0.0, 0.0, 0.0, 0.0)
        self._steps_start = 0

    def _totals(self, trainer: L.Trainer) -> tuple[float, float]:
        sync = [c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback)]
        if not sync:
            return 0.0, 0.0
        # getattr: a checkout from before the totals existed (to measure "before") still runs.
        return getattr(sync[0], "overhead_total_ms", 0.0), getattr(sync[0], "wait_total_ms", 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps_start = trainer.global_step
        self._start = (*self._totals(trainer), time.thread_time(), time.perf_counter())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        overhead, wait = self._totals(trainer)
        self.epochs.append(wall - self._start[3])
        self.cpu.append(cpu - self._start[2])
        self.steps.append(trainer.global_step - self._steps_start)
        self.overhead_ms.append(overhead - self._start[0])
        self.wait_ms.append(wait - self._start[1])


def fit(algorithm: str, epochs: int, seed: int, log_dir: str, extra: list[L.Callback] | None = None,
        ascent_batch_size: int = B) -> EpochClock:
    """One fit of the digits recipe with ``algorithm`` ("sgd" or "asyncsam"); returns its clock."""
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(root=log_dir, batch_size=B, num_workers=0)
    module = Classifier(
        net=digits_cnn(10),
        num_classes=10,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15),
    )
    strategy: Any = "auto" if algorithm == "sgd" else AsyncSAMStrategy(
        rho=0.1, ascent_batch_size=ascent_batch_size, ascent_threads=1)
    clock = EpochClock()
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=1, max_epochs=epochs, log_every_n_steps=10,
        logger=CSVLogger(log_dir, name=algorithm), limit_val_batches=0, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[clock, *(extra or [])],
    )
    trainer.fit(module, datamodule=data)
    return clock


def steady(values: list[float]) -> float:
    """The median of epochs 2..N: the first epoch holds the worker's start-up."""
    return statistics.median(values[1:])


class Profiled(L.Callback):
    """cProfile of the training steps after the first epoch (no start-up, no worker boot)."""

    def __init__(self) -> None:
        self.prof = cProfile.Profile()
        self.steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            self.steps = -trainer.global_step
            self.prof.enable()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.prof.disable()
        self.steps += trainer.global_step


def profile(epochs: int, top: int) -> str:
    """cProfile each algorithm's steady state: Python function calls per step and the costliest functions."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ("sgd", "asyncsam"):
            profiled = Profiled()
            fit(algorithm, epochs, 0, tmp, extra=[profiled])
            stats = pstats.Stats(profiled.prof, stream=io.StringIO())
            calls, steps = stats.total_calls, profiled.steps  # type: ignore[attr-defined]
            lines.append(f"## {algorithm}: {calls} calls in {steps} steps after the first epoch "
                         f"({calls / steps:.0f} per step)")
            out = io.StringIO()
            pstats.Stats(profiled.prof, stream=out).sort_stats("tottime").print_stats(top)
            lines.append(out.getvalue())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fits of each algorithm, interleaved")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit (the first is not counted)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one fit of each instead")
    parser.add_argument("--top", type=int, default=25, help="functions to list with --profile")
    parser.add_argument("--name", default="overhead_digits_cpu", help="results/<name>.{json,md}")
    parser.add_argument("--ascent-batch-size", type=int, default=B,
                        help="b' (b = 32); 1 leaves the worker almost idle, isolating the trainer's own cost")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 and --repeats >= 1")
    torch.set_num_threads(1)
    if args.profile:
        print(profile(args.epochs, args.top))
        return

    runs: dict[str, list[dict[str, Any]]] = {"sgd": [], "asyncsam": []}
    with tempfile.TemporaryDirectory() as tmp:
        fit("sgd", 2, 0, tmp)  # warm-up: imports, allocator, the dataset's first load
        for r in range(args.repeats):
            order = ("sgd", "asyncsam") if r % 2 == 0 else ("asyncsam", "sgd")
            for algorithm in order:
                clock = fit(algorithm, args.epochs, r, tmp, ascent_batch_size=args.ascent_batch_size)
                steps = sum(clock.steps[1:])
                runs[algorithm].append({
                    "epoch_times_s": clock.epochs,
                    "epoch_cpu_s": clock.cpu,
                    "steps_per_epoch": clock.steps[1],
                    "steady_epoch_s": steady(clock.epochs),
                    "steady_cpu_s": steady(clock.cpu),
                    "overhead_ms_per_step": sum(clock.overhead_ms[1:]) / steps,
                    "wait_ms_per_step": sum(clock.wait_ms[1:]) / steps,
                })
                print(f"repeat {r} {algorithm:8s} steady epoch {steady(clock.epochs) * 1e3:7.1f} ms", flush=True)

    steps_per_epoch = runs["sgd"][0]["steps_per_epoch"]
    sgd = [run["steady_epoch_s"] for run in runs["sgd"]]
    asam = [run["steady_epoch_s"] for run in runs["asyncsam"]]
    # Paired by repetition: the two fits of a repetition ran back to back.
    per_step = [(a - s) / steps_per_epoch * 1e3 for a, s in zip(asam, sgd)]
    metric = [run["overhead_ms_per_step"] for run in runs["asyncsam"]]
    wait = [run["wait_ms_per_step"] for run in runs["asyncsam"]]
    cpu_per_step = [(a["steady_cpu_s"] - s["steady_cpu_s"]) / steps_per_epoch * 1e3
                    for a, s in zip(runs["asyncsam"], runs["sgd"])]
    summary = {
        "sgd_epoch_s": statistics.median(sgd),
        "asyncsam_epoch_s": statistics.median(asam),
        "ratio": statistics.median(asam) / statistics.median(sgd),
        "added_ms_per_step": statistics.median(per_step),
        "added_ms_per_step_range": [min(per_step), max(per_step)],
        "overhead_metric_ms_per_step": statistics.median(metric),
        "wait_ms_per_step": statistics.median(wait),
        "added_cpu_ms_per_step": statistics.median(cpu_per_step),
        "added_cpu_ms_per_step_range": [min(cpu_per_step), max(cpu_per_step)],
    }
    env = environment()
    rng = lambda xs, scale=1e3: f"{min(xs) * scale:.1f}-{max(xs) * scale:.1f}"  # noqa: E731
    table = "\n".join([
        f"Digits recipe (digits_cnn, b = 32, b' = {args.ascent_batch_size}, {steps_per_epoch} steps an epoch), "
        "trainer and worker at 1 thread "
        f"each; {args.repeats} interleaved repetitions of {args.epochs} epochs, steady-state epoch = median of "
        "epochs 2..N of a fit; median over repetitions (range).",
        "",
        "| | steady-state epoch | x SGD | added wall per step | of which waiting for the worker "
        "| added trainer-thread CPU per step | `asyncsam/overhead_ms` |",
        "|---|---|---|---|---|---|---|",
        f"| SGD | {summary['sgd_epoch_s'] * 1e3:.1f} ms ({rng(sgd)}) | 1.00 | | | | |",
        f"| AsyncSAM (b' = {args.ascent_batch_size}) | {summary['asyncsam_epoch_s'] * 1e3:.1f} ms ({rng(asam)}) | {summary['ratio']:.3f} | "
        f"{summary['added_ms_per_step']:.3f} ms ({rng(per_step, 1)}) | {summary['wait_ms_per_step']:.3f} ms | "
        f"{summary['added_cpu_ms_per_step']:.3f} ms ({rng(cpu_per_step, 1)}) | "
        f"{summary['overhead_metric_ms_per_step']:.3f} ms |",
        "",
        environment_markdown(env),
    ])
    print(table)
    write_results(args.name, {"config": vars(args), "environment": env, "summary": summary, "runs": runs}, table)


if __name__ == "__main__":
    main()
