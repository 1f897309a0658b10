"""Throughput of the SAM family through ``Trainer.fit`` (the paper's Figure 3), measured side by side in one run.

Outcome on this project's 2-core CPU machine (main process 1 thread standing for the fast device,
worker 1 thread standing for the spare CPU): see ``benchmarks/README.md``.

Commands:
    python benchmarks/throughput.py                                   # CPU simulation (2 cores)
    python benchmarks/throughput.py --accelerator cuda --ascent-threads 8   # GPU main, CPU worker
    python benchmarks/throughput.py --algorithms sgd,sam,asyncsam_auto --models resnet20,wrn16_2
    asyncsam-report --throughput benchmarks/results/throughput_cpu.json --figure3 figure3.png

Algorithms: the names of the ``algorithm=`` configs (``sgd``, ``sam``, ``asam``, ``gsam``, ``esam``,
``looksam``, ``mesa``, ``aesam``, ``asyncsam``), built from those configs, so with Table A.2's
values; and AsyncSAM at a chosen b': ``asyncsam_b`` (b' = b), ``asyncsam_auto`` (the system-aware
b', the config's default) or ``asyncsam_<int>``, each also as ``..._synced``: beside a GPU, the trainer
synchronizes its stream before each step's post instead of letting the stream post it
(``ASYNCSAM_STREAM_POST=0``, see ``lightning_asyncsam/ascent/stream_post.py``), the A/B of that
change in one run. Two departures from the configs, both so that
every step measured is a step of the method: MESA starts its trajectory loss at epoch 0 (its
``start_epoch`` of 5 would make every measured step an SGD step); AE-SAM chooses SAM or SGD steps
by its own rule, with c sweeping from lambda2 to lambda1 over the run's ``max_steps`` as it would
over a whole training.

Method: every algorithm trains the same model on the same synthetic CIFAR-shaped data (3x32x32,
10 classes) with ``Trainer.fit``. Runs are interleaved (the order rotates each repetition) so that
drift of the machine hits every algorithm alike; the first ``--warmup`` steps of each run are
dropped; throughput is images / second over the remaining steps, reported as the median and the
range over repetitions, as the ratio of medians to SGD's, and as the median of paired ratios (each
run against the SGD run of the same repetition), which is less sensitive to slow drift.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_asyncsam  # noqa: F401  (registers the strategies)
from lightning_asyncsam import AsyncSAMCallback
from lightning_asyncsam.app.models import CifarResNet, WideResNet

try:
    from benchmarks._common import algorithm_strategy, environment, environment_markdown, write_results
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import algorithm_strategy, environment, environment_markdown, write_results

MODELS = {
    "resnet20": lambda: CifarResNet(depth=20, num_classes=10),  # the paper's Figure 3 setting, 0.27 M params
    "wrn16_2": lambda: WideResNet(depth=16, widen_factor=2, num_classes=10),  # 0.69 M params, ~2x the step time
}
#: Figure 3's members (GSAM too, which the paper omits as "virtually the same throughput as SAM").
FAMILY = ("sgd", "sam", "gsam", "esam", "looksam", "mesa", "aesam", "asyncsam_b", "asyncsam_auto")
SYNCED = "_synced"  # the arm's suffix: the stream synchronized before each post (see the module's docstring)
STREAM_POST = "ASYNCSAM_STREAM_POST"
ASYNC_METRICS = ("asyncsam/wait_ms", "asyncsam/overhead_ms", "asyncsam/perturb_ms", "asyncsam/ascent_ms",
                 "asyncsam/ascent_batch_size")


class Net(L.LightningModule):
    def __init__(self, model: str, lr: float = 0.05) -> None:
        super().__init__()
        self.net = MODELS[model]()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def per_sample(self, batch):
        """Logits and per-sample losses: the hook ESAM and MESA train through."""
        x, y = batch
        logits = self.net(x)
        return logits, F.cross_entropy(logits, y, reduction="none")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class StepClock(L.Callback):
    """Wall-clock time at each step boundary, and AsyncSAM's per-step diagnostics."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.stamps: list[float] = []
        self.diag: dict[str, list[float]] = {k: [] for k in ASYNC_METRICS}
        self._overhead_total = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(self._now())
        # The previous step's values: AsyncSAMCallback runs after this one. Read from the callback,
        # not from `callback_metrics`, so that AsyncSAM pays for no extra logging here.
        sync = [c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback)]
        if sync and len(self.stamps) > 1:
            for k, v in sync[0].metrics.items():
                if k in self.diag and k != "asyncsam/overhead_ms":
                    self.diag[k].append(v)
            # overhead_ms is published as a mean over the logging window; the running total gives each step's.
            total = sync[0].overhead_total_ms
            self.diag["asyncsam/overhead_ms"].append(total - self._overhead_total)
            self._overhead_total = total

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append(self._now())


def make_strategy(algo: str, args: argparse.Namespace) -> Any:
    """The strategy of ``conf/algorithm/<algo>.yaml``; ``asyncsam_<b | auto | int>`` fixes AsyncSAM's b'."""
    algo = algo.removesuffix(SYNCED)
    if algo == "mesa":
        return algorithm_strategy("mesa", start_epoch=0)  # every measured step pays for the EMA and the KL term
    if algo.split("_", 1)[0] != "asyncsam":
        return algorithm_strategy(algo)
    suffix = algo.split("_", 1)[1] if "_" in algo else "auto"  # asyncsam_b, asyncsam_auto, or asyncsam_<b'>
    size = {"b": args.batch_size, "auto": "auto"}.get(suffix) or int(suffix)
    cpus = None if args.ascent_cpus == "none" else "auto"
    return algorithm_strategy("asyncsam", ascent_batch_size=size, ascent_threads=args.ascent_threads,
                              ascent_cpus=cpus)


def run_once(model: str, algo: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    steps = args.warmup + args.steps
    n = args.batch_size * steps
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    clock = StepClock(args.accelerator == "cuda")
    trainer = L.Trainer(strategy=make_strategy(algo, args), accelerator=args.accelerator, devices=1,
                        max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[clock], precision=args.precision)
    saved = os.environ.pop(STREAM_POST, None)
    if algo.endswith(SYNCED):
        os.environ[STREAM_POST] = "0"  # read when the worker starts
    try:
        trainer.fit(Net(model), DataLoader(data, batch_size=args.batch_size, shuffle=True))
    finally:
        os.environ.pop(STREAM_POST, None)
        if saved is not None:
            os.environ[STREAM_POST] = saved
    t = clock.stamps
    measured = t[-1] - t[args.warmup]
    out = {"images_per_s": args.batch_size * args.steps / measured,
           "step_ms_median": statistics.median(1e3 * (b - a) for a, b in zip(t[args.warmup:-1], t[args.warmup + 1:]))}
    for k, v in clock.diag.items():
        tail = v[args.warmup:]
        if tail:
            out[k.split("/")[1] + "_median"] = statistics.median(tail)
    return out


def write_table(results: dict[str, dict[str, list[dict[str, Any]]]], models: list[str], algos: list[str],
                args: argparse.Namespace, final: bool, env: dict[str, Any] | None = None) -> str:
    """Write the table and the JSON (after every run, so that a run cut short still leaves its numbers)."""
    env = env or environment()
    done = sum(len(runs) for per_model in results.values() for runs in per_model.values())
    total = len(models) * len(algos) * args.reps
    lines = [
        f"Throughput, b = {args.batch_size}, {args.accelerator} main process with {args.main_threads} thread(s), "
        f"ascent worker with {args.ascent_threads} thread(s), ascent_cpus={getattr(args, 'ascent_cpus', 'none')}; median [min, max] of {args.reps} interleaved runs, "
        f"{args.steps} steps each after {args.warmup} warm-up steps."
        + ("" if final else f" PARTIAL: {done} of {total} runs done."),
        "",
        "| model | algorithm | images/s | x SGD | x SGD, paired | b' | wait ms | overhead ms | perturb+restore ms "
        "| ascent ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for model in models:
        sgd_runs = results[model].get("sgd") or []
        sgd = statistics.median(r["images_per_s"] for r in sgd_runs) if sgd_runs else None
        for algo in algos:
            runs = results[model][algo]
            if not runs:
                continue
            ips = [r["images_per_s"] for r in runs]
            med = statistics.median(ips)
            ratio = med / sgd if sgd else float("nan")

            def diag(key: str, fmt: str = "{:.2f}") -> str:
                vals = [r[key] for r in runs if key in r]
                return fmt.format(statistics.median(vals)) if vals else "-"

            # Paired: the ratio to the SGD run of the same repetition (minutes apart, not tens of
            # minutes), so that slow drift of the machine cancels; median [min, max] over repetitions.
            paired = [r["images_per_s"] / base["images_per_s"] for r, base in zip(runs, sgd_runs)]
            paired_text = (f"{statistics.median(paired):.3f} [{min(paired):.2f}, {max(paired):.2f}]"
                           if paired else "-")
            summary[f"{model}/{algo}"] = {"images_per_s_median": med, "min": min(ips), "max": max(ips),
                                          "ratio_to_sgd": ratio, "paired_ratios": paired, "runs": len(runs)}
            lines.append(
                f"| {model} | {algo} | {med:.1f} [{min(ips):.1f}, {max(ips):.1f}] | {ratio:.3f} | {paired_text} | "
                f"{diag('ascent_batch_size_median', '{:.0f}')} | {diag('wait_ms_median')} | "
                f"{diag('overhead_ms_median')} | {diag('perturb_ms_median')} | {diag('ascent_ms_median', '{:.0f}')} |"
            )
    lines += ["", environment_markdown(env)]
    table = "\n".join(lines)
    path = write_results(args.name or f"throughput_{args.accelerator}",
                         {"settings": vars(args), "environment": env, "complete": final, "summary": summary,
                          "runs": results}, table)
    return f"{table}\n\nwrote {path}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--algorithms", default=",".join(FAMILY), help="comma-separated (see Algorithms above)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32-true")
    p.add_argument("--main-threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--ascent-threads", type=int, default=1, help="torch threads of the ascent worker")
    p.add_argument("--ascent-cpus", default="none", choices=["auto", "none"],
                   help="AsyncSAM's ascent_cpus ('none': None, the default; 'auto': split the cores on a CPU main)")
    p.add_argument("--name", default=None, help="results file name (default: throughput_<accelerator>)")
    p.add_argument("--retable", default=None, metavar="JSON",
                   help="rebuild the table of an earlier results file (its own settings and machine)")
    args = p.parse_args()
    if args.retable:
        saved = json.loads(Path(args.retable).read_text())
        old = argparse.Namespace(**{**saved["settings"], "name": Path(args.retable).stem})
        runs = saved["runs"]
        print(write_table(runs, list(runs), list(next(iter(runs.values()))), old, saved.get("complete", True),
                          saved["environment"]))
        return
    torch.set_num_threads(args.main_threads)
    models, algos = args.models.split(","), args.algorithms.split(",")
    for model in models:
        if model not in MODELS:
            p.error(f"--models: {model!r} is not one of {sorted(MODELS)}")
    for algo in algos:  # every name resolves before the first minute of measuring
        try:
            make_strategy(algo, args)
        except Exception as err:  # a misspelt name, or a strategy this checkout lacks (Hydra wraps it)
            p.error(f"--algorithms: {algo!r}: {err}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {m: {a: [] for a in algos} for m in models}
    for model in models:
        for rep in range(args.reps):
            order = algos[rep % len(algos):] + algos[: rep % len(algos)]
            for algo in order:
                r = run_once(model, algo, args)
                results[model][algo].append(r)
                print(f"{model:9s} rep {rep} {algo:14s} {r['images_per_s']:8.1f} img/s", flush=True)
                write_table(results, models, algos, args, final=False)
    print(write_table(results, models, algos, args, final=True))


if __name__ == "__main__":
    main()
