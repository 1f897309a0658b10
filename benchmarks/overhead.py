"""What AsyncSAM adds to the trainer's thread per step, against SGD, and whether its metric says so.

The digits recipe's setting (recipes/digits.yaml: ``digits_cnn``, b = 32, SGD with momentum, lr
0.05, cosine decay, ``log_every_n_steps=10``, a CSV logger), with the trainer and the worker at
one thread each (``torch.set_num_threads(1)`` here, ``ascent_threads=1``). SGD and AsyncSAM with
b' = b and with b' = 1 are fitted side by side in ONE process, interleaved (the order rotates every
repetition), so that all share the machine's minute. b' = 1 leaves the worker almost idle: the
difference between the two AsyncSAM arms is what the worker's compute on the other core costs the
trainer (the two cores share caches and memory bandwidth), apart from AsyncSAM's own work. A callback times every training epoch inside the fit;
validation is off, so an epoch is exactly its 45 training steps. Each fit's steady-state epoch is
the median of its epochs 2..N (epoch 1 holds the worker's start-up).

It reports, per arm, the median (and the range) over repetitions of those steady-state
epochs; the difference per step between AsyncSAM and SGD, in wall-clock and in the trainer
thread's CPU time (which a shared machine's other processes do not inflate), and how much of the
wall-clock difference was waiting for a late worker; and the mean of ``asyncsam/overhead_ms``,
the strategy's own account of what it adds to the trainer's thread, beside a robust estimate of
the same (:func:`robust_step_cost`: on this VM a preempted step puts a spike of hundreds of
microseconds into a timed region now and then, and the mean follows the VM's phase).

Commands:
    python benchmarks/overhead.py                          # SGD, b' = 32 and b' = 1; 5 repetitions of 8 epochs, ~3 min
    python benchmarks/overhead.py --ascent-batch-size 32 --repeats 9 --epochs 10
    python benchmarks/overhead.py --profile                # cProfile: Python calls per step, SGD vs AsyncSAM
    python benchmarks/overhead.py --phases --repeats 6     # per phase of the step: where the added time lands
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
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
    from benchmarks._common import SHARED_CORE, CoreProbe, environment, environment_markdown, write_results
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import SHARED_CORE, CoreProbe, environment, environment_markdown, write_results

B = 32  # recipes/digits.yaml: 1,437 training images / 32 = 45 steps an epoch (the last one short)


class EpochClock(L.Callback):
    """Per training epoch: wall-clock, the trainer thread's CPU time, and AsyncSAM's own totals.

    CPU time (``time.thread_time``) is what the trainer's thread computed, whoever else held the
    cores meanwhile: on a shared machine it measures the added work where wall-clock cannot.
    """

    def __init__(self, callback_type: type = AsyncSAMCallback) -> None:
        self._callback_type = callback_type  # another package's (overhead_pairs.py) has its own class
        self.epochs: list[float] = []
        self.cpu: list[float] = []
        self.steps: list[int] = []
        self.overhead_ms: list[float] = []
        self.wait_ms: list[float] = []
        self.step_s: list[list[float]] = []  # per epoch: each step's wall-clock, batch start to batch start
        # Per epoch: each step's share of overhead_total_ms (a running total, read at each batch start),
        # and whether the step logged (the diagnostics' steps cost more).
        self.step_overhead_ms: list[list[float]] = []
        self.step_logged: list[list[bool]] = []
        self._totals_at: list[float] = []
        self._logged: list[bool] = []
        self._start = (0.0, 0.0, 0.0, 0.0)
        self._steps_start = 0
        self._marks: list[float] = []
        self._sync: AsyncSAMCallback | None = None

    def _totals(self, trainer: L.Trainer) -> tuple[float, float]:
        sync = [c for c in trainer.callbacks if isinstance(c, self._callback_type)]
        if not sync:
            return 0.0, 0.0
        # getattr: a checkout from before the totals existed (to measure "before") still runs.
        return getattr(sync[0], "overhead_total_ms", 0.0), getattr(sync[0], "wait_total_ms", 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Found once: the per-batch hook below must stay small, or it evicts what it measures. A
        # package from before the per-step totals existed (overhead_pairs.py --old) is timed by the
        # clock alone.
        sync = next((c for c in trainer.callbacks if isinstance(c, self._callback_type)), None)
        self._sync = sync if hasattr(sync, "overhead_total_ms") and hasattr(sync, "log_step") else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps_start = trainer.global_step
        self._marks = []
        self._totals_at = []
        self._logged = []
        self._start = (*self._totals(trainer), time.thread_time(), time.perf_counter())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._marks.append(time.perf_counter())
        sync = self._sync
        if sync is not None:
            self._totals_at.append(sync.overhead_total_ms)
            if batch_idx:  # whether the previous step logged: synchronize has not run for this one yet
                self._logged.append(sync.log_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        self.step_s.append([b - a for a, b in zip(self._marks, self._marks[1:])])
        overhead, wait = self._totals(trainer)
        marks = [*self._totals_at, overhead]
        self.step_overhead_ms.append([b - a for a, b in zip(marks, marks[1:])])
        sync = self._sync
        self.step_logged.append([*self._logged, bool(sync.log_step)] if sync is not None else [])
        self.epochs.append(wall - self._start[3])
        self.cpu.append(cpu - self._start[2])
        self.steps.append(trainer.global_step - self._steps_start)
        self.overhead_ms.append(overhead - self._start[0])
        self.wait_ms.append(wait - self._start[1])


def fit(algorithm: str, epochs: int, seed: int, log_dir: str, extra: list[L.Callback] | None = None,
        ascent_batch_size: int = B, package: Any = None) -> EpochClock:
    """One fit of the digits recipe with ``algorithm`` ("sgd" or "asyncsam"); returns its clock.

    ``package``: the module whose ``AsyncSAMStrategy`` and ``AsyncSAMCallback`` to use (another
    commit's, see overhead_pairs.py); None: this checkout's.
    """
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(root=log_dir, batch_size=B, num_workers=0)
    module = Classifier(
        net=digits_cnn(10),
        num_classes=10,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4),
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15),
    )
    strategy_class = AsyncSAMStrategy if package is None else package.AsyncSAMStrategy
    strategy: Any = "auto" if algorithm == "sgd" else strategy_class(
        rho=0.1, ascent_batch_size=ascent_batch_size, ascent_threads=1)
    clock = EpochClock(AsyncSAMCallback if package is None else package.AsyncSAMCallback)
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


def steady_step(step_s: list[list[float]]) -> float:
    """The median step of epochs 2..N: robust to the VM's slow spells shorter than half a fit."""
    return statistics.median(d for epoch in step_s[1:] for d in epoch)


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


class PhaseClock(L.Callback):
    """Per step of epochs 2..N, the wall-clock of each phase of Lightning's training step, by its hooks.

    Where AsyncSAM's added time lands: its synchronization and perturb sit between the batch's start
    and the user's ``training_step`` (stamped by the strategy's ``training_step``, see ``fit``),
    restore between ``on_after_backward`` and ``on_before_optimizer_step``, ``end_step`` after the
    update, the lookahead and ``batch_to_device`` between two batches.
    """

    PHASES = ("ours before the descent", "forward", "backward", "restore and closure end",
              "update and step end", "between batches")

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {k: [] for k in self.PHASES}
        self.descent_at = 0.0
        self._t: dict[str, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if trainer.current_epoch >= 1 and batch_idx > 0 and "end" in self._t:
            self.samples["between batches"].append(now - self._t["end"])
        self._t = {"start": now}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Any) -> None:
        self._t["before_backward"] = time.perf_counter()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t["after_backward"] = time.perf_counter()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._t["before_step"] = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now, t = time.perf_counter(), self._t
        t["end"] = now
        if trainer.current_epoch < 1 or len(t) < 5:
            return
        self.samples["ours before the descent"].append(self.descent_at - t["start"])
        self.samples["forward"].append(t["before_backward"] - self.descent_at)
        self.samples["backward"].append(t["after_backward"] - t["before_backward"])
        self.samples["restore and closure end"].append(t["before_step"] - t["after_backward"])
        self.samples["update and step end"].append(now - t["before_step"])


def phases(repeats: int, epochs: int, sizes: list[int]) -> str:
    """Per-phase medians of each arm's steps, paired by repetition against SGD's (see :class:`PhaseClock`)."""
    from lightning.pytorch.strategies import Strategy

    clocks: list[PhaseClock] = []
    original = Strategy.training_step

    def stamped(self: Strategy, *args: Any, **kwargs: Any) -> Any:  # the user's training_step starts here
        if clocks:
            clocks[-1].descent_at = time.perf_counter()
        return original(self, *args, **kwargs)

    arms = ["sgd", *(f"asyncsam_b{n}" for n in sizes)]
    medians: dict[str, dict[str, list[float]]] = {arm: {k: [] for k in PhaseClock.PHASES} for arm in arms}
    Strategy.training_step = stamped  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fit("sgd", 2, 0, tmp)
            for r in range(repeats):
                for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
                    clocks.append(PhaseClock())
                    n = int(arm.removeprefix("asyncsam_b")) if arm != "sgd" else B
                    fit("sgd" if arm == "sgd" else "asyncsam", epochs, r, tmp, extra=[clocks[-1]], ascent_batch_size=n)
                    for k, v in clocks[-1].samples.items():
                        medians[arm][k].append(statistics.median(v) * 1e6)
    finally:
        Strategy.training_step = original  # type: ignore[method-assign]
    head = "| phase | SGD | " + " | ".join(f"b' = {n}, paired" for n in sizes) + " |"
    rows = [head, "|---|---|" + "---|" * len(sizes)]
    for k in PhaseClock.PHASES:
        sgd = medians["sgd"][k]
        cells = [f"{statistics.median(a - b for a, b in zip(medians[arm][k], sgd)):+.1f} µs" for arm in arms[1:]]
        rows.append(f"| {k} | {statistics.median(sgd):.1f} µs | " + " | ".join(cells) + " |")
    return "\n".join(rows)


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


def robust_step_cost(clock: EpochClock) -> float:
    """The added cost per step, robust to preemption: each kind of step's median, weighted by its share.

    Steps differ by kind: a logging step computes the diagnostics and hands them to the loggers; the
    step after it (which carried the loggers' call until the totals became running ones read at each
    batch start, the eleventh round); an epoch's first step restarts the lookahead; the others. Each
    kind's median, weighted by its share of the steps, is the mean without the spikes that a VM's
    steal time puts into a timed region now and then, and with every kind's systematic cost.
    """
    return sum(k["share"] * k["median_ms"] for k in step_kinds(clock).values())


def step_kinds(clock: EpochClock) -> dict[str, dict[str, float]]:
    """Each kind of step's share of the steps of epochs 2..N and its median ``overhead_ms`` (see robust_step_cost)."""
    kinds: dict[str, list[float]] = {}
    for costs, flags in zip(clock.step_overhead_ms[1:], clock.step_logged[1:]):
        for i, (cost, flag) in enumerate(zip(costs, flags)):
            kind = "logging" if flag else "after" if i and flags[i - 1] else "first" if i == 0 else "other"
            kinds.setdefault(kind, []).append(cost)
    n = sum(len(v) for v in kinds.values())
    return {k: {"share": len(v) / n, "median_ms": statistics.median(v)} for k, v in kinds.items()}


def _arm_summary(runs: list[dict[str, Any]], sgd_runs: list[dict[str, Any]], steps_per_epoch: int) -> dict[str, Any]:
    """One AsyncSAM arm against SGD, paired by repetition (the fits of a repetition ran back to back)."""
    sgd = [run["steady_epoch_s"] for run in sgd_runs]
    asam = [run["steady_epoch_s"] for run in runs]
    per_step = [(a - s) / steps_per_epoch * 1e3 for a, s in zip(asam, sgd)]
    step_sgd = [run["median_step_s"] for run in sgd_runs]
    step_asam = [run["median_step_s"] for run in runs]
    cpu_per_step = [(a["steady_cpu_s"] - s["steady_cpu_s"]) / steps_per_epoch * 1e3 for a, s in zip(runs, sgd_runs)]
    return {
        "asyncsam_epoch_s": statistics.median(asam),
        "asyncsam_epoch_range_s": [min(asam), max(asam)],
        "ratio": statistics.median(asam) / statistics.median(sgd),
        "ratio_paired": statistics.median(a / s for a, s in zip(asam, sgd)),
        "added_ms_per_step": statistics.median(per_step),
        "added_ms_per_step_range": [min(per_step), max(per_step)],
        "overhead_metric_ms_per_step": statistics.median(run["overhead_ms_per_step"] for run in runs),
        "overhead_metric_ms_robust": statistics.median(run["overhead_ms_robust"] for run in runs),
        "wait_ms_per_step": statistics.median(run["wait_ms_per_step"] for run in runs),
        "added_cpu_ms_per_step": statistics.median(cpu_per_step),
        "added_cpu_ms_per_step_range": [min(cpu_per_step), max(cpu_per_step)],
        "median_step_ms": statistics.median(step_asam) * 1e3,
        "median_step_ratio_paired": statistics.median(a / s for a, s in zip(step_asam, step_sgd)),
        "median_step_added_ms": statistics.median((a - s) * 1e3 for a, s in zip(step_asam, step_sgd)),
        # Each kind of step: its share and its median overhead_ms, medians over repetitions.
        "step_kinds": {kind: {key: statistics.median(run["step_kinds"][kind][key] for run in runs
                                                     if kind in run.get("step_kinds", {}))
                              for key in ("share", "median_ms")}
                       for kind in sorted({k for run in runs for k in run.get("step_kinds", {})})},
    }


def _summary_rows(runs: dict[str, list[dict[str, Any]]], arms: list[str], sizes: list[int], steps_per_epoch: int,
                  label: str) -> tuple[dict[str, Any], list[str]]:
    """The summary of ``runs`` (every arm, paired by repetition) and its table rows, each label followed by ``label``."""
    sgd = [run["steady_epoch_s"] for run in runs["sgd"]]
    summary: dict[str, Any] = {"sgd_epoch_s": statistics.median(sgd), "sgd_epoch_range_s": [min(sgd), max(sgd)]}
    for arm in arms[1:]:
        summary[arm] = _arm_summary(runs[arm], runs["sgd"], steps_per_epoch)
    rng = lambda xs, scale=1e3: f"{min(xs) * scale:.1f}-{max(xs) * scale:.1f}"  # noqa: E731
    sgd_step = statistics.median(run["median_step_s"] for run in runs["sgd"])
    summary["sgd_median_step_ms"] = sgd_step * 1e3
    rows = [f"| SGD{label} | {summary['sgd_epoch_s'] * 1e3:.1f} ms ({rng(sgd)}) | 1.00 | | | | | | | "
            f"{sgd_step * 1e3:.3f} ms | |"]
    for arm, n in zip(arms[1:], sizes):
        a = summary[arm]
        rows.append(
            f"| AsyncSAM (b' = {n}){label} | {a['asyncsam_epoch_s'] * 1e3:.1f} ms "
            f"({rng(a['asyncsam_epoch_range_s'])}) | "
            f"{a['ratio']:.3f} | {a['ratio_paired']:.3f} | {a['added_ms_per_step']:.3f} ms "
            f"({rng(a['added_ms_per_step_range'], 1)}) | {a['wait_ms_per_step']:.3f} ms | "
            f"{a['added_cpu_ms_per_step']:.3f} ms ({rng(a['added_cpu_ms_per_step_range'], 1)}) | "
            f"{a['overhead_metric_ms_per_step']:.3f} ms | {a['overhead_metric_ms_robust']:.3f} ms "
            f"({a['overhead_metric_ms_per_step'] / (sgd_step * 1e3):.1%} of SGD's median step) | "
            f"{a['median_step_ms']:.3f} ms | "
            f"{a['median_step_ratio_paired']:.3f} ({a['median_step_added_ms']:+.3f} ms) |")
    return summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fits of each arm, interleaved")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit (the first is not counted)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one fit of each instead")
    parser.add_argument("--top", type=int, default=25, help="functions to list with --profile")
    parser.add_argument("--phases", action="store_true",
                        help="print where the added time lands, phase by phase of the training step, instead")
    parser.add_argument("--name", default="overhead_digits_cpu", help="results/<name>.{json,md}")
    parser.add_argument("--ascent-batch-size", default=f"{B},1",
                        help="comma-separated b' values, one AsyncSAM arm each (b = 32). b' = 1 leaves the worker "
                             "almost idle: its difference to b' = b is what the worker's compute on the other core "
                             "costs the trainer (shared caches and memory bandwidth), apart from AsyncSAM's own work")
    args = parser.parse_args()
    sizes = [int(v) for v in str(args.ascent_batch_size).split(",") if v.strip()]
    if args.epochs < 2 or args.repeats < 1 or not sizes or any(not 1 <= n <= B for n in sizes):
        parser.error(f"--epochs must be >= 2, --repeats >= 1, and every --ascent-batch-size in [1, {B}]")
    torch.set_num_threads(1)
    if args.phases:
        print(f"Median per step, epochs 2..{args.epochs}, {args.repeats} interleaved repetitions; AsyncSAM's "
              "difference to SGD's in the same repetition, median over repetitions.\n")
        print(phases(args.repeats, args.epochs, sizes))
        return
    if args.profile:
        print(profile(args.epochs, args.top))
        return

    arms = ["sgd", *(f"asyncsam_b{n}" for n in sizes)]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp, CoreProbe() as cores:
        fit("sgd", 2, 0, tmp)  # warm-up: imports, allocator, the dataset's first load
        for r in range(args.repeats):
            order = arms[r % len(arms):] + arms[:r % len(arms)]  # rotate, so that no arm always runs first
            for arm in order:
                n = int(arm.removeprefix("asyncsam_b")) if arm != "sgd" else B
                before = cores.probe()
                clock = fit("sgd" if arm == "sgd" else "asyncsam", args.epochs, r, tmp, ascent_batch_size=n)
                after = cores.probe()
                steps = sum(clock.steps[1:])
                runs[arm].append({
                    # The second core's state around the fit (1.0: spare; ~2: it shares the first's).
                    "core_slowdown": [p["slowdown"] for p in (before, after) if p],
                    "epoch_times_s": clock.epochs,
                    "epoch_cpu_s": clock.cpu,
                    "steps_per_epoch": clock.steps[1],
                    "steady_epoch_s": steady(clock.epochs),
                    "steady_cpu_s": steady(clock.cpu),
                    "median_step_s": steady_step(clock.step_s),
                    "overhead_ms_per_step": sum(clock.overhead_ms[1:]) / steps,
                    "overhead_ms_robust": robust_step_cost(clock) if arm != "sgd" else 0.0,
                    "step_kinds": step_kinds(clock) if arm != "sgd" else {},
                    "wait_ms_per_step": sum(clock.wait_ms[1:]) / steps,
                })
                print(f"repeat {r} {arm:12s} steady epoch {steady(clock.epochs) * 1e3:7.1f} ms", flush=True)

    steps_per_epoch = runs["sgd"][0]["steps_per_epoch"]
    summary, rows = _summary_rows(runs, arms, sizes, steps_per_epoch, "")
    # The repetitions whose every fit met a spare second core (CoreProbe before and after each):
    # what the worker costs the trainer where the premise of a spare device holds.
    spare = [r for r in range(args.repeats)
             if all(max(runs[arm][r]["core_slowdown"] or [math.inf]) < SHARED_CORE for arm in arms)]
    summary["repetitions_with_a_spare_core"] = spare
    if spare and len(spare) < args.repeats:
        subset = {arm: [runs[arm][r] for r in spare] for arm in arms}
        summary["spare_core"], spare_rows = _summary_rows(subset, arms, sizes, steps_per_epoch,
                                                          f", spare core ({len(spare)} reps)")
        rows += spare_rows
    probes = [x for arm in arms for run in runs[arm] for x in run["core_slowdown"]]
    env = environment(probe_cores=False)
    table = "\n".join([
        f"Digits recipe (digits_cnn, b = 32, {steps_per_epoch} steps an epoch), trainer and worker at 1 thread "
        f"each; {args.repeats} repetitions of {args.epochs} epochs, the arms interleaved; steady-state epoch = "
        "median of epochs 2..N of a fit; median over repetitions (range). x SGD, paired: the median of each "
        "repetition's ratio. Median step: the median wall-clock of a step (batch start to batch start) over "
        "epochs 2..N of a fit, median over repetitions; its x SGD is paired. `asyncsam/overhead_ms`: the metric's "
        "mean over epochs 2..N (what the logs hold, windows averaged); robust: the median of each kind of step "
        "(logging, after a logging step, an epoch's first, the others), weighted by its share of the steps (a step "
        "that the VM preempts inside a timed region inflates the mean, not the medians); in brackets the mean as a "
        "share of SGD's median step, which moves far less with the VM's speed than the milliseconds do. "
        f"The second core (`_common.CoreProbe`, before and after every fit): a compute-bound neighbour slowed the "
        f"first core {min(probes, default=math.nan):.2f}-{max(probes, default=math.nan):.2f}x (1.00x: spare); "
        f"{len(spare)} of {args.repeats} repetitions met a spare core (< {SHARED_CORE}x) around every fit"
        + (", and the rows marked \"spare core\" hold those alone." if spare and len(spare) < args.repeats else "."),
        "",
        "| | steady-state epoch | x SGD | x SGD, paired | added wall per step | of which waiting for the worker "
        "| added trainer-thread CPU per step | `asyncsam/overhead_ms` | robust | median step "
        "| median step x SGD, paired |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "`asyncsam/overhead_ms` by kind of step (all repetitions; each kind's median, median over repetitions, "
        "and its share of the steps): " + "; ".join(
            f"b' = {arm.removeprefix('asyncsam_b')}: " + ", ".join(
                f"{kind} {v['median_ms']:.3f} ms ({v['share']:.0%})" for kind, v in summary[arm]["step_kinds"].items())
            for arm in arms[1:]) + ".",
        "",
        environment_markdown(env),
    ])
    print(table)
    write_results(args.name, {"config": vars(args), "environment": env, "summary": summary, "runs": runs}, table)


if __name__ == "__main__":
    main()
