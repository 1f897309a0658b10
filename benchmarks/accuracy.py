"""Accuracy under label noise: the SAM family on scikit-learn's digits, several seeds, one table.

SAM's margin over SGD is large when training labels are noisy (SGD memorizes the noise, a flat
minimum resists it), so the comparison stands out of the seed noise even on a tiny dataset. The
digits are the only real image data available offline here.

Commands:
    python benchmarks/accuracy.py                 # 10 algorithms x 5 seeds, about 6 minutes on 2 cores
    python benchmarks/accuracy.py --algorithms sgd,sam,asyncsam --seeds 3
    python benchmarks/accuracy.py --select-rho 0.05,0.1,0.2,0.3,0.5,1.0 --name accuracy_digits_noise_selected
                                                  # each radius selected first: about 17 minutes on 2 cores
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

Radius selection (``--select-rho``): what this benchmark measures is how long a method resists
memorizing the 40% noisy labels, and that depends strongly on the radius (SAM goes from 80% at
rho = 0.1 to 97% at 0.5), so one fixed rho for all ranks the radii more than the methods. Table A.2
itself picks some settings per benchmark ("x ~ y": the best one; rho 0.05 ~ 0.1). With the option,
every algorithm that has a radius (``rho``; ESAM's too, which divides it by beta inside) gets it
chosen the same way, without the test set: a fixed stratified ``--val-fraction`` of the *noisy*
training set is held out, each candidate is fitted on the rest with ``--select-seeds`` seeds
(1000, 1001, ...), scored by its accuracy against the held-out noisy labels after the last epoch,
and the best mean wins (ties: the smaller rho). The final runs then train on the whole training set
with the selected rho, as without the option. SGD and MESA have no radius and are not selected.
The peak-epoch column (mean over seeds of each seed's best epoch on the test set) is for reading
the curves only; it selects nothing.
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
    from benchmarks._common import ALGORITHM_DIR, algorithm_strategy, environment, environment_markdown, write_results
    from benchmarks._selection import holdout_indices, mean_std, parse_radii, peak_accuracies, select_radius
except ImportError:
    from _common import ALGORITHM_DIR, algorithm_strategy, environment, environment_markdown, write_results
    from _selection import holdout_indices, mean_std, parse_radii, peak_accuracies, select_radius


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
#: Seeds of the selection fits: apart from the final runs' 0, 1, ...
SELECT_SEED_BASE = 1000


def config_radius(algo: str) -> float | None:
    """The ``rho`` of the algorithm's config (``asyncsam_*``: asyncsam's); None where it has no radius."""
    from omegaconf import OmegaConf

    path = ALGORITHM_DIR / f"{'asyncsam' if algo.startswith('asyncsam_') else algo}.yaml"
    rho = OmegaConf.load(path).get("rho") if path.is_file() else None
    return None if rho is None else float(rho)


def make_strategy(algo: str, args: argparse.Namespace, rho: float | None = None) -> Any:
    """The strategy of ``conf/algorithm/<algo>.yaml``; ``asyncsam_<prev|next>_<b|b/4>`` fixes AsyncSAM's.

    ``rho`` (else ``--rho``, else the config's) sets the radius of the algorithms that have one.
    """
    rho = args.rho if rho is None else rho
    radius = {} if rho is None or algo in ("sgd", "mesa") else {"rho": rho}
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


def run_once(algo: str, seed: int, args: argparse.Namespace, train: TensorDataset, test: TensorDataset,
             rho: float | None = None) -> dict:
    """One fit on ``train``; ``test_acc`` and the curve are accuracies on ``test`` (whatever labels it holds)."""
    L.seed_everything(seed, verbose=False)
    model = DigitsNet(args.epochs, args.lr)
    clock = EpochClock(test)
    trainer = L.Trainer(strategy=make_strategy(algo, args, rho), accelerator="cpu", devices=1, max_epochs=args.epochs,
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


def select_radii(algos: list[str], args: argparse.Namespace, train: TensorDataset) -> dict[str, dict]:
    """Each algorithm's radius, chosen on held-out noisy training labels (the module's docstring)."""
    x, y = train.tensors
    fit_idx, val_idx = holdout_indices(y.numpy(), args.val_fraction)
    fit, val = TensorDataset(x[fit_idx], y[fit_idx]), TensorDataset(x[val_idx], y[val_idx])
    selection: dict[str, dict] = {}
    for algo in algos:
        if config_radius(algo) is None:
            selection[algo] = {"selected": None, "skipped": "no radius"}
            print(f"select {algo:18s} skipped: no radius", flush=True)
            continue
        runs: dict[float, list[dict]] = {}
        for rho in args.candidates:
            runs[rho] = []
            for i in range(args.select_seeds):
                r = run_once(algo, SELECT_SEED_BASE + i, args, fit, val, rho)
                runs[rho].append({"seed": SELECT_SEED_BASE + i, "val_acc": r["test_acc"], "wall_s": r["wall_s"],
                                  "val_history": r["val_history"]})
                print(f"select {algo:18s} rho {rho:<5g} seed {SELECT_SEED_BASE + i} noisy-val acc "
                      f"{r['test_acc']:.4f} wall {r['wall_s']:.1f}s", flush=True)
        scores = {rho: [r["val_acc"] for r in rs] for rho, rs in runs.items()}
        selected = select_radius(scores)
        selection[algo] = {"selected": selected, "config_rho": config_radius(algo),
                           "val_acc_mean": {str(rho): mean_std(v)[0] for rho, v in scores.items()},
                           "val_acc_std": {str(rho): mean_std(v)[1] for rho, v in scores.items()},
                           "runs": {str(rho): rs for rho, rs in runs.items()}}
        print(f"select {algo:18s} -> rho {selected:g}", flush=True)
    selection["_split"] = {"fit": len(fit_idx), "held_out": len(val_idx), "val_fraction": args.val_fraction,
                           "seeds": [SELECT_SEED_BASE + i for i in range(args.select_seeds)]}
    return selection


def selection_lines(selection: dict[str, dict], candidates: list[float], select_seeds: int) -> list[str]:
    """The validation score of every candidate radius, the selected one in bold."""
    split = selection["_split"]
    lines = [f"Radius selection: fit on {split['fit']} training samples, scored by the accuracy against the "
             f"{split['held_out']} held-out *noisy* training labels ({split['val_fraction']:.0%}, stratified, "
             f"fixed) after the last epoch, mean ± std over {select_seeds} seed(s); the selected rho in bold "
             "(best mean, ties to the smaller). The test set is not used.",
             "",
             "| algorithm | " + " | ".join(f"rho = {c:g}" for c in candidates) + " |",
             "|---|" + "---|" * len(candidates)]
    skipped, edge = [], []
    for algo, sel in selection.items():
        if algo.startswith("_"):
            continue
        if sel["selected"] is None:
            skipped.append(algo)
            continue
        cells = []
        for c in candidates:
            cell = f"{100 * sel['val_acc_mean'][str(c)]:.2f} ± {100 * sel['val_acc_std'][str(c)]:.2f}"
            cells.append(f"**{cell}**" if c == sel["selected"] else cell)
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
        if sel["selected"] == max(candidates) and len(candidates) > 1:
            edge.append(algo)
    if skipped:
        lines += ["", f"Not selected (no radius): {', '.join(skipped)}."]
    if edge:
        lines += ["", f"Selected at the largest candidate, so the grid may cut off a better radius: {', '.join(edge)}."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rho", type=float, default=None, help="every radius (default: each config's, Table A.2)")
    p.add_argument("--select-rho", default=None, metavar="R1,R2,...",
                   help="select each algorithm's radius among these on held-out noisy training labels")
    p.add_argument("--select-seeds", type=int, default=3, help="seeds per candidate radius (with --select-rho)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="part of the noisy training set held out for --select-rho")
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument("--name", default="accuracy_digits_noise")
    args = p.parse_args()
    args.candidates = None
    if args.select_rho is not None:
        if args.rho is not None:
            p.error("--rho and --select-rho exclude each other")
        try:
            args.candidates = parse_radii(args.select_rho)
        except ValueError as err:
            p.error(f"--select-rho: {err}")
        if args.select_seeds < 1 or not 0 < args.val_fraction < 1:
            p.error("--select-seeds must be >= 1 and --val-fraction in (0, 1)")
    torch.set_num_threads(args.threads)
    train, test = noisy_digits(args.noise)
    algos = args.algorithms.split(",")
    for algo in algos:  # every name resolves before the first run
        try:
            make_strategy(algo, args)
        except Exception as err:  # a misspelt name, or a strategy this checkout lacks (Hydra wraps it)
            p.error(f"--algorithms: {algo!r}: {err}")

    selection = select_radii(algos, args, train) if args.candidates else None
    radius: dict[str, float | None] = {}
    for algo in algos:
        if config_radius(algo) is None:
            radius[algo] = None
        elif selection is not None:
            radius[algo] = selection[algo]["selected"]
        else:
            radius[algo] = args.rho if args.rho is not None else config_radius(algo)
    results: dict[str, list[dict]] = {a: [] for a in algos}
    for seed in range(args.seeds):
        for algo in algos:
            r = run_once(algo, seed, args, train, test, radius[algo])
            r["rho"] = radius[algo]
            results[algo].append(r)
            print(f"seed {seed} {algo:18s} acc {r['test_acc']:.4f} wall {r['wall_s']:.1f}s epoch {r['epoch_s']:.3f}s",
                  flush=True)

    env = environment(probe_cores=False)
    if selection is not None:
        how = f"rho selected per algorithm among {', '.join(f'{c:g}' for c in args.candidates)} (below)"
        rho_source = "selected"
    elif args.rho is None:
        how, rho_source = "rho of each algorithm= config (Table A.2)", "config"
    else:
        how, rho_source = f"rho = {args.rho}", "--rho"
    lines = [
        f"Digits, {int(args.noise * 100)}% symmetric label noise on the training labels, b = {args.batch_size}, "
        f"{how}, {args.epochs} epochs, {args.seeds} seeds; clean test accuracy after the last epoch. "
        "The peak-epoch column (mean over seeds of each seed's best epoch on the test set) is for reading "
        "only: it is not used for any selection.",
        "",
        f"| algorithm | rho ({rho_source}) | b' | test accuracy, last epoch (mean ± std) | peak-epoch test accuracy "
        "(not used for selection) | fit wall time (median) | epoch time after the first (median) | x SGD epoch time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sgd_epoch = statistics.median(r["epoch_s"] for r in results["sgd"]) if "sgd" in results else float("nan")
    summary = {}
    for algo in algos:
        mean, std = mean_std([100 * r["test_acc"] for r in results[algo]])
        peak, peak_std = mean_std([100 * a for a in peak_accuracies([r["val_history"] for r in results[algo]])])
        wall = statistics.median(r["wall_s"] for r in results[algo])
        epoch = statistics.median(r["epoch_s"] for r in results[algo])
        ascent = [r["ascent_batch_size"] for r in results[algo] if r.get("ascent_batch_size")]  # per-run medians
        b_prime = f"{statistics.median(ascent):.0f}" if ascent else "-"
        summary[algo] = {"acc_mean": mean, "acc_std": std, "peak_acc_mean": peak, "peak_acc_std": peak_std,
                         "rho": radius[algo], "rho_source": rho_source if radius[algo] is not None else None,
                         "wall_s_median": wall, "epoch_s_median": epoch}
        rho = "-" if radius[algo] is None else f"{radius[algo]:g}"
        lines.append(f"| {algo} | {rho} | {b_prime} | {mean:.2f} ± {std:.2f} % | {peak:.2f} ± {peak_std:.2f} % | "
                     f"{wall:.1f} s | {epoch * 1e3:.0f} ms | {epoch / sgd_epoch:.2f} |")
    best = max(summary, key=lambda a: summary[a]["acc_mean"])
    lines += ["", f"Best mean: {best}, {summary[best]['acc_mean']:.2f} %."]
    if "asyncsam" in summary:
        gap = summary[best]["acc_mean"] - summary["asyncsam"]["acc_mean"]
        defaults = " (b' auto, ascent_data next, rho selected like the others)" if selection is not None else ""
        lines[-1] += f" AsyncSAM with its defaults{defaults}: {gap:.2f} points below it."
    if selection is not None:
        lines += [""] + selection_lines(selection, args.candidates, args.select_seeds)
    lines += ["", environment_markdown(env)]
    table = "\n".join(lines)
    print(table)
    payload = {"settings": vars(args), "environment": env, "summary": summary, "runs": results}
    if selection is not None:
        payload["selection"] = selection
    write_results(args.name, payload, table)


if __name__ == "__main__":
    main()
