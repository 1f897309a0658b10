"""Accuracy under label noise: the SAM family on scikit-learn's digits, several seeds, one table.

SAM's margin over SGD is large when training labels are noisy (SGD memorizes the noise, a flat
minimum resists it), so the comparison stands out of the seed noise even on a tiny dataset. The
digits are the only real image data available offline here.

Commands:
    python benchmarks/accuracy.py                 # 10 algorithms x 5 seeds, an estimated 15 minutes on 2 cores
    python benchmarks/accuracy.py --algorithms sgd,sam,asyncsam --seeds 3
    asyncsam-report benchmarks/results/accuracy_digits_noise.json --plot figure4.png   # Table 4.1, Figure 4

Algorithms: the names of the ``algorithm=`` configs (``sgd``, ``sam``, ``asam``, ``gsam``, ``esam``,
``looksam``, ``mesa``, ``aesam``, ``asyncsam``), built from those configs, so with Table A.2's
values (``--rho`` overrides every radius); ``asyncsam`` is AsyncSAM with its config's defaults
(b' "auto", ``ascent_data="next"``); ``asyncsam_<prev|next>_<b|b/4>`` fixes its ascent data
and b'.

Setting: a fixed stratified split (70% train, 30% test), 40% symmetric label noise on the training
labels only (a noisy label is a uniformly drawn *other* class; fixed noise seed, so every run sees
the same noisy labels), the package's small digits CNN, b = 32, SGD with momentum 0.9, weight decay
5e-4, cosine learning-rate schedule. The seed changes the initialization and the shuffling.
Reported: clean test accuracy after the last epoch, mean and std over seeds; the median wall time of
``fit`` (which includes AsyncSAM's one-time worker start-up of a few seconds) and the median time of
an epoch after the first (the steady state). Each run also keeps its curve, the test accuracy after
every epoch against the training time so far (the evaluations themselves not counted): Figure 4.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning_asyncsam  # noqa: F401
from lightning_asyncsam import AsyncSAMCallback
from lightning_asyncsam.app.models import digits_cnn

try:
    from benchmarks._common import algorithm_strategy, environment, environment_markdown, write_results
except ImportError:
    from _common import algorithm_strategy, environment, environment_markdown, write_results


def noisy_digits(noise: float, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, stratify=digits.target,
                                           random_state=seed)
    rng = np.random.default_rng(seed)
    y_train = y[idx_train].clone()
    flip = rng.random(len(y_train)) < noise
    shift = torch.tensor(rng.integers(1, 10, size=len(y_train)))  # another class, uniformly
    y_train[torch.tensor(flip)] = (y_train[torch.tensor(flip)] + shift[torch.tensor(flip)]) % 10
    return TensorDataset(x[idx_train], y_train), TensorDataset(x[idx_test], y[idx_test])


class DigitsNet(L.LightningModule):
    def __init__(self, epochs: int, lr: float) -> None:
        super().__init__()
        self.net = digits_cnn(num_classes=10)
        self.epochs, self.lr = epochs, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def per_sample(self, batch):
        """Logits and per-sample losses: the hook ESAM and MESA train through."""
        x, y = batch
        logits = self.net(x)
        return logits, F.cross_entropy(logits, y, reduction="none")

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)}


ALGORITHMS = ["sgd", "sam", "asam", "gsam", "esam", "looksam", "mesa", "aesam", "asyncsam", "asyncsam_next_b"]


def make_strategy(algo: str, args: argparse.Namespace) -> Any:
    """The strategy of ``conf/algorithm/<algo>.yaml``; ``asyncsam_<prev|next>_<b|b/4>`` fixes AsyncSAM's."""
    radius = {} if args.rho is None or algo in ("sgd", "mesa") else {"rho": args.rho}
    if algo == "asyncsam":
        return algorithm_strategy("asyncsam", ascent_threads=1, **radius)
    if not algo.startswith("asyncsam_"):
        return algorithm_strategy(algo, **radius)
    parts = algo.split("_")
    if len(parts) != 3 or parts[1] not in ("prev", "next") or parts[2] not in ("b", "b/4"):
        raise ValueError(f"{algo!r}: use asyncsam_<prev|next>_<b|b/4>")
    b_prime = args.batch_size if parts[2] == "b" else args.batch_size // 4
    return algorithm_strategy("asyncsam", ascent_batch_size=b_prime, ascent_threads=1,
                              ascent_data="previous" if parts[1] == "prev" else "next", **radius)


class EpochClock(L.Callback):
    """Epoch boundaries, and the test accuracy after each epoch against the training time so far."""

    def __init__(self, test: TensorDataset) -> None:
        self.test = test
        self.stamps: list[float] = []
        self.curve: list[tuple[float, float]] = []
        self.ascent_sizes: list[float] = []
        self.start = self.evaluating = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # AsyncSAM's b' of the previous step, from its callback's diagnostics (which run after this
        # one). Kept per step: the last value alone would be that of an epoch's short last batch.
        sync = [c for c in trainer.callbacks if isinstance(c, AsyncSAMCallback)]
        if sync and "asyncsam/ascent_batch_size" in sync[0].metrics:
            self.ascent_sizes.append(sync[0].metrics["asyncsam/ascent_batch_size"])

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        begin = time.perf_counter()
        self.curve.append((begin - self.start - self.evaluating, clean_accuracy(pl_module, self.test)))
        self.evaluating += time.perf_counter() - begin  # the curve's clock leaves the evaluations out

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())


def clean_accuracy(model: DigitsNet, test: TensorDataset) -> float:
    """Clean test accuracy of ``model`` (left in the mode it was in)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        acc = (model.net(x).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return acc


def run_once(algo: str, seed: int, args: argparse.Namespace, train: TensorDataset, test: TensorDataset) -> dict:
    L.seed_everything(seed, verbose=False)
    model = DigitsNet(args.epochs, args.lr)
    clock = EpochClock(test)
    trainer = L.Trainer(strategy=make_strategy(algo, args), accelerator="cpu", devices=1, max_epochs=args.epochs,
                        logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[clock])
    start = time.perf_counter()
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True))
    wall = time.perf_counter() - start
    # Epochs after the first: the steady state, without the worker's one-time start-up.
    epochs = [b - a for a, b in zip(clock.stamps[1:-1], clock.stamps[2:])]
    return {"test_acc": clean_accuracy(model, test), "wall_s": wall, "epoch_s": statistics.median(epochs),
            "first_epoch_s": clock.stamps[1] - clock.stamps[0] if len(clock.stamps) > 1 else None,
            "ascent_batch_size": statistics.median(clock.ascent_sizes) if clock.ascent_sizes else None,
            "val_history": [[round(t, 3), round(a, 6)] for t, a in clock.curve]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rho", type=float, default=None, help="every radius (default: each config's, Table A.2)")
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--name", default="accuracy_digits_noise")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = noisy_digits(args.noise)
    algos = args.algorithms.split(",")
    for algo in algos:  # every name resolves before the first run
        try:
            make_strategy(algo, args)
        except Exception as err:  # a misspelt name, or a strategy this checkout lacks (Hydra wraps it)
            p.error(f"--algorithms: {algo!r}: {err}")
    results: dict[str, list[dict]] = {a: [] for a in algos}
    for seed in range(args.seeds):
        for algo in algos:
            r = run_once(algo, seed, args, train, test)
            results[algo].append(r)
            print(f"seed {seed} {algo:18s} acc {r['test_acc']:.4f} wall {r['wall_s']:.1f}s epoch {r['epoch_s']:.3f}s",
                  flush=True)

    env = environment()
    radius = "rho of each algorithm= config (Table A.2)" if args.rho is None else f"rho = {args.rho}"
    lines = [
        f"Digits, {int(args.noise * 100)}% symmetric label noise on the training labels, b = {args.batch_size}, "
        f"{radius}, {args.epochs} epochs, {args.seeds} seeds; clean test accuracy after the last epoch.",
        "",
        "| algorithm | b' | test accuracy (mean ± std) | fit wall time (median) | epoch time after the first "
        "(median) | x SGD epoch time |",
        "|---|---|---|---|---|---|",
    ]
    sgd_epoch = statistics.median(r["epoch_s"] for r in results["sgd"]) if "sgd" in results else float("nan")
    summary = {}
    for algo in algos:
        accs = [100 * r["test_acc"] for r in results[algo]]
        wall = statistics.median(r["wall_s"] for r in results[algo])
        epoch = statistics.median(r["epoch_s"] for r in results[algo])
        mean, std = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        ascent = [r["ascent_batch_size"] for r in results[algo] if r.get("ascent_batch_size")]  # per-run medians
        b_prime = f"{statistics.median(ascent):.0f}" if ascent else "-"
        summary[algo] = {"acc_mean": mean, "acc_std": std, "wall_s_median": wall, "epoch_s_median": epoch}
        lines.append(f"| {algo} | {b_prime} | {mean:.2f} ± {std:.2f} % | {wall:.1f} s | {epoch * 1e3:.0f} ms | "
                     f"{epoch / sgd_epoch:.2f} |")
    best = max(summary, key=lambda a: summary[a]["acc_mean"])
    lines += ["", f"Best mean: {best}, {summary[best]['acc_mean']:.2f} %."]
    if "asyncsam" in summary:
        gap = summary[best]["acc_mean"] - summary["asyncsam"]["acc_mean"]
        lines[-1] += f" AsyncSAM with its defaults: {gap:.2f} points below it."
    lines += ["", environment_markdown(env)]
    table = "\n".join(lines)
    print(table)
    write_results(args.name, {"settings": vars(args), "environment": env, "summary": summary, "runs": results}, table)


if __name__ == "__main__":
    main()
