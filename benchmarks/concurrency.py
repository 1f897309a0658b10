"""What a busy ascent worker costs the main process, measured inside one ``Trainer.fit``.

``throughput.py`` compares whole runs, minutes apart; on a noisy VM the machine's drift between
runs is as large as the effect. This benchmark removes the drift: within one AsyncSAM fit it
switches the worker between an idle load (b' = 1) and a full one (b' = --busy) every
``--block`` steps, so both conditions share the same process, model, data and minute. It reports
the main process's step time in each, its CPU time (time on a core) and its involuntary context
switches (preemptions): a step that is slower in wall time but not in CPU time lost its core to
another runnable thread; a step that takes more CPU time ran slower on a shared core.

It compares worker settings: ``ascent_cpus=None`` (the OS places both processes) against
``ascent_cpus="auto"`` (the trainer and the worker on disjoint cores), at the default niceness.

Commands:
    python benchmarks/concurrency.py                        # ResNet-20, b = 128, unpinned and pinned
    python benchmarks/concurrency.py --models resnet20,wrn16_2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_asyncsam import AsyncSAMStrategy

try:
    from benchmarks._common import environment, environment_markdown, write_results
    from benchmarks.throughput import Net
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import environment, environment_markdown, write_results
    from throughput import Net


def _preemptions() -> int:
    """Involuntary context switches of the calling thread so far (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Alternate(L.Callback):
    """Sets b' for the ascent that runs during each step, and times the step in the main process."""

    def __init__(self, busy: int, block: int) -> None:
        self.busy, self.block = busy, block
        self.rows: list[tuple[bool, float, float, int]] = []
        self._last: tuple[float, float, int] | None = None
        self._busy_now = False

    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = (time.perf_counter(), time.thread_time(), _preemptions())
        if self._last is not None:
            self.rows.append((self._busy_now, now[0] - self._last[0], now[1] - self._last[1], now[2] - self._last[2]))
        # This runs before AsyncSAMCallback, which submits the ascent that overlaps this step.
        self._busy_now = (trainer.global_step // self.block) % 2 == 1
        trainer.strategy.ascent_batch_size = self.busy if self._busy_now else 1
        self._last = (time.perf_counter(), time.thread_time(), _preemptions())


def run_once(model: str, pinned: bool, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    alternate = Alternate(args.busy or args.batch_size, args.block)
    strategy = AsyncSAMStrategy(rho=0.1, ascent_batch_size=1, ascent_threads=args.ascent_threads,
                                ascent_cpus="auto" if pinned else None)
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_steps=args.steps, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[alternate])
    trainer.fit(Net(model), DataLoader(data, batch_size=args.batch_size, shuffle=True))
    rows = alternate.rows[args.block:]  # the first block holds the unperturbed step 0 and warm-up
    out: dict[str, Any] = {}
    for busy in (False, True):
        part = [r for r in rows if r[0] == busy]
        key = "busy" if busy else "idle"
        out[f"{key}_steps"] = len(part)
        out[f"{key}_wall_ms"] = 1e3 * statistics.median(r[1] for r in part)
        out[f"{key}_cpu_ms"] = 1e3 * statistics.median(r[2] for r in part)
        out[f"{key}_preemptions"] = statistics.mean(r[3] for r in part)
    out["ratio"] = out["idle_wall_ms"] / out["busy_wall_ms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20")
    p.add_argument("--repeats", type=int, default=2, help="runs of each setting, interleaved")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--busy", type=int, default=None, help="b' of the busy blocks (default: b)")
    p.add_argument("--block", type=int, default=3, help="steps per block")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ascent-threads", type=int, default=1)
    p.add_argument("--main-threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.main_threads)
    results = {}
    for model in args.models.split(","):
        for repeat in range(args.repeats):
            for pinned in (False, True):
                r = run_once(model, pinned, args)
                key = f"{model}/{'pinned' if pinned else 'unpinned'}/{repeat}"
                results[key] = r
                print(f"{key}: idle {r['idle_wall_ms']:.0f} ms, busy {r['busy_wall_ms']:.0f} ms, "
                      f"ratio {r['ratio']:.3f}", flush=True)
    env = environment()
    lines = [
        f"Main-process step time with the worker idle (b' = 1) and busy (b' = {args.busy or args.batch_size}), "
        f"alternating every {args.block} steps within one fit; b = {args.batch_size}, {args.steps} steps, main "
        f"process {args.main_threads} thread(s), worker {args.ascent_threads}; medians over steps.",
        "",
        "| model | ascent_cpus | run | idle: wall ms | idle: CPU ms | busy: wall ms | busy: CPU ms | idle / busy "
        "| preemptions per step, idle / busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        model, pinning, repeat = key.split("/")
        setting = '"auto" (split)' if pinning == "pinned" else "None"
        lines.append(
            f"| {model} | {setting} | {repeat} | {r['idle_wall_ms']:.0f} | {r['idle_cpu_ms']:.0f} | {r['busy_wall_ms']:.0f} | "
            f"{r['busy_cpu_ms']:.0f} | {r['ratio']:.3f} | {r['idle_preemptions']:.1f} / {r['busy_preemptions']:.1f} |"
        )
    lines += ["", environment_markdown(env)]
    table = "\n".join(lines)
    print(table)
    path = write_results("concurrency_cpu", {"settings": vars(args), "environment": env, "results": results}, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
