"""Accuracy under label noise: SGD, SAM and AsyncSAM on scikit-learn's digits, several seeds, one table.

SAM's margin over SGD is large when training labels are noisy (SGD memorizes the noise, a flat
minimum resists it), so the comparison stands out of the seed noise even on a tiny dataset. The
digits are the only real image data available offline here.

Command:
    python benchmarks/accuracy.py                 # 6 algorithms x 5 seeds, about 10 minutes on 2 cores

Setting: a fixed stratified split (70% train, 30% test), 40% symmetric label noise on the training
labels only (a noisy label is a uniformly drawn *other* class; fixed noise seed, so every run sees
the same noisy labels), the package's small digits CNN, b = 32, SGD with momentum 0.9, weight decay
5e-4, cosine learning-rate schedule. The seed changes the initialization and the shuffling.
Reported: clean test accuracy after the last epoch, mean and std over seeds; the median wall time of
``fit`` (which includes AsyncSAM's one-time worker start-up of a few seconds) and the median time of
an epoch after the first (the steady state).
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
from lightning_asyncsam import AsyncSAMStrategy, SAMStrategy
from lightning_asyncsam.app.models import digits_cnn

try:
    from benchmarks._common import environment, environment_markdown, write_results
except ImportError:
    from _common import environment, environment_markdown, write_results


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

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)}


ALGORITHMS = ["sgd", "sam", "asyncsam_prev_b", "asyncsam_prev_b/4", "asyncsam_next_b", "asyncsam_next_b/4"]


def make_strategy(algo: str, args: argparse.Namespace) -> Any:
    if algo == "sgd":
        return "auto"
    if algo == "sam":
        return SAMStrategy(rho=args.rho)
    _, mode, size = algo.split("_")
    b_prime = args.batch_size if size == "b" else args.batch_size // 4
    return AsyncSAMStrategy(rho=args.rho, ascent_batch_size=b_prime, ascent_threads=1,
                            ascent_data="previous" if mode == "prev" else "next")


class EpochClock(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())


def run_once(algo: str, seed: int, args: argparse.Namespace, train: TensorDataset, test: TensorDataset) -> dict:
    L.seed_everything(seed, verbose=False)
    model = DigitsNet(args.epochs, args.lr)
    clock = EpochClock()
    trainer = L.Trainer(strategy=make_strategy(algo, args), accelerator="cpu", devices=1, max_epochs=args.epochs,
                        logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[clock])
    start = time.perf_counter()
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True))
    wall = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        acc = (model.net(x).argmax(1) == y).float().mean().item()
    # Epochs after the first: the steady state, without the worker's one-time start-up.
    epochs = [b - a for a, b in zip(clock.stamps[1:-1], clock.stamps[2:])]
    return {"test_acc": acc, "wall_s": wall, "epoch_s": statistics.median(epochs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rho", type=float, default=0.1)
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--name", default="accuracy_digits_noise")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train, test = noisy_digits(args.noise)
    algos = args.algorithms.split(",")
    results: dict[str, list[dict]] = {a: [] for a in algos}
    for seed in range(args.seeds):
        for algo in algos:
            r = run_once(algo, seed, args, train, test)
            results[algo].append(r)
            print(f"seed {seed} {algo:18s} acc {r['test_acc']:.4f} wall {r['wall_s']:.1f}s epoch {r['epoch_s']:.3f}s",
                  flush=True)

    env = environment()
    lines = [
        f"Digits, {int(args.noise * 100)}% symmetric label noise on the training labels, b = {args.batch_size}, "
        f"rho = {args.rho}, {args.epochs} epochs, {args.seeds} seeds; clean test accuracy after the last epoch.",
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
        b_prime = {"b": str(args.batch_size), "b/4": str(args.batch_size // 4)}.get(algo.split("_")[-1], "-")
        if algo == "sam":
            b_prime = str(args.batch_size)
        summary[algo] = {"acc_mean": mean, "acc_std": std, "wall_s_median": wall, "epoch_s_median": epoch}
        lines.append(f"| {algo} | {b_prime} | {mean:.2f} ± {std:.2f} % | {wall:.1f} s | {epoch * 1e3:.0f} ms | "
                     f"{epoch / sgd_epoch:.2f} |")
    lines += ["", environment_markdown(env)]
    table = "\n".join(lines)
    print(table)
    write_results(args.name, {"settings": vars(args), "environment": env, "summary": summary, "runs": results}, table)


if __name__ == "__main__":
    main()
