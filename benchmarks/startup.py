"""Start-up: how much longer a tiny AsyncSAM fit takes than the same SGD fit (issue 10, item 6).

Outcome on this project's 2-core CPU machine: see ``benchmarks/README.md`` ("Start-up").

Commands:
    python -m benchmarks.startup --label after                      # this checkout's code
    PYTHONPATH=/path/to/old/checkout GIT_SHA=<sha> python benchmarks/startup.py --label before

Method: one script run times ``Trainer.fit`` (wall clock, from the call to its return) of a tiny
2-epoch job, 48 samples of 5 features, batch 8, a 5-7-3 MLP, with SGD (``strategy="auto"``) and
with AsyncSAM (``ascent_threads=1``, b' = 4), interleaved, ``--repeats`` times each; it reports
the medians and the median of the paired differences. Everything is imported and one warm-up fit
of each runs before the clock starts, so the difference is AsyncSAM's own cost: mostly starting
its worker process and waiting for it to be ready at the second step. Each label's figures are
kept in ``results/startup_cpu.json`` next to the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_asyncsam
from lightning_asyncsam import AsyncSAMStrategy

try:
    from benchmarks._common import HERE, environment, environment_markdown
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import HERE, environment, environment_markdown

RESULTS = HERE / "results" / "startup_cpu.json"


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SeeWorker(L.Callback):
    """Notes how the worker was started (the strategy closes it before fit() returns)."""

    def __init__(self) -> None:
        self.start_method: str | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        worker = getattr(trainer.strategy, "worker", None)
        if worker is not None:
            self.start_method = getattr(worker, "start_method", "spawn")


def fit_seconds(algorithm: str) -> tuple[float, dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    data = DataLoader(TensorDataset(torch.randn(48, 5, generator=g), torch.randint(0, 3, (48,), generator=g)),
                      batch_size=8)
    strategy: Any = "auto" if algorithm == "sgd" else AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1)
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=1, max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[seen := SeeWorker()])
    model = Tiny()
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    extra = {}
    if algorithm == "asyncsam":
        extra["start_method"] = seen.start_method
    return seconds, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", required=True, help="the name of this set of figures, e.g. before / after")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    for algorithm in ("sgd", "asyncsam"):  # warm-up: imports, first-call caches
        fit_seconds(algorithm)
    times: dict[str, list[float]] = {"sgd": [], "asyncsam": []}
    extras: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = ("sgd", "asyncsam") if r % 2 == 0 else ("asyncsam", "sgd")
        for algorithm in order:
            seconds, extra = fit_seconds(algorithm)
            times[algorithm].append(seconds)
            if extra:
                extras.append(extra)
    diffs = [a - s for a, s in zip(times["asyncsam"], times["sgd"])]
    env = environment(probe_cores=False)
    entry = {
        "label": args.label,
        "environment": env,
        "repeats": args.repeats,
        "fit_s": times,
        "median_fit_s": {k: statistics.median(v) for k, v in times.items()},
        "median_paired_extra_s": statistics.median(diffs),
        "start_method": extras[0].get("start_method") if extras else None,
        "package_path": lightning_asyncsam.__file__,
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = entry
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(environment_markdown(env))
    print()
    print(table(results))


def table(results: dict[str, Any]) -> str:
    rows = ["| code | worker start | SGD fit (s) | AsyncSAM fit (s) | AsyncSAM extra (s, median of paired) |",
            "|---|---|---:|---:|---:|"]
    for label, e in results.items():
        sha = (e["environment"].get("git_sha") or "?")[:7]
        rows.append(f"| {label} ({sha}) | {e.get('start_method') or 'spawn'} | {e['median_fit_s']['sgd']:.2f} | "
                    f"{e['median_fit_s']['asyncsam']:.2f} | {e['median_paired_extra_s']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
