"""The paper's Figures 3 and 4 for the whole SAM family, drawn by ``asyncsam-report``.

* :func:`plot_throughput` (Figure 3): images/s per algorithm as bars, the ratio to SGD written on
  each bar, one panel per model and results file of ``benchmarks/throughput.py``.
* :func:`plot_accuracy_vs_time` (Figure 4): validation accuracy against wall-clock time, one panel
  per recipe, one line per algorithm: the mean over its seeds (the i-th validation of each seed
  averaged in time and in accuracy), with a band of one std of the accuracy.

matplotlib is imported inside the functions, with the Agg backend, so no display is needed and the
tables of ``asyncsam-report`` do not pay for the import.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_asyncsam.app.report import (
    ALGORITHM_ORDER,
    Run,
    display_name,
    order_algorithms,
    order_recipes,
    throughput_rows,
    throughput_title,
    validation_curve,
)

#: One color per member of the family, the same in both figures; variants share their member's.
COLORS = dict(zip(ALGORITHM_ORDER, ("tab:gray", "tab:orange", "tab:brown", "tab:red", "tab:purple", "tab:olive",
                                     "tab:cyan", "tab:pink", "tab:green"), strict=True))


def color(algorithm: str) -> str:
    """The color of an algorithm, or of the member it is a variant of (black when unknown).

    Example::

        >>> color("asyncsam_auto") == color("asyncsam") == "tab:green", color("custom")
        (True, 'black')
    """
    return COLORS.get(algorithm.partition("_")[0], "black")


Curve = tuple[Sequence[float], Sequence[float]]


def mean_curve(curves: Sequence[Curve]) -> tuple[list[float], list[float], list[float]]:
    """Mean time, mean accuracy and accuracy std at each validation, over the first ``n`` of every curve.

    ``n`` is the length of the shortest curve, so that every point averages the same runs. The std
    is 0 for a single curve.

    Example::

        >>> mean_curve([([1.0, 2.0, 3.0], [0.5, 0.7, 0.8]), ([3.0, 4.0], [0.7, 0.9])])
        ([2.0, 3.0], [0.6, 0.8], [0.1414..., 0.1414...])
    """
    n = min((len(times) for times, _ in curves), default=0)
    times = [statistics.fmean(t[i] for t, _ in curves) for i in range(n)]
    accs = [statistics.fmean(a[i] for _, a in curves) for i in range(n)]
    stds = [statistics.stdev(a[i] for _, a in curves) if len(curves) > 1 else 0.0 for i in range(n)]
    return times, accs, stds


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_time(runs: Sequence[Run], path: str | Path) -> None:
    """Draw Figure 4 (validation accuracy against wall-clock time, a panel per recipe) to a PNG."""
    plt = _pyplot()
    recipes = order_recipes(r.recipe for r in runs)
    fig, axes = plt.subplots(1, len(recipes), figsize=(6 * len(recipes), 4.5), squeeze=False)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        recipe_runs = [r for r in runs if r.recipe == recipe]
        curves = [validation_curve(r) for r in recipe_runs]
        longest = max((max(times, default=0.0) for times, _ in curves), default=0.0)
        scale, unit = (60.0, "min") if longest > 600 else (1.0, "s")
        for algorithm in order_algorithms(r.algorithm for r in recipe_runs):
            own = [c for r, c in zip(recipe_runs, curves, strict=True) if r.algorithm == algorithm and c[0]]
            times, accs, stds = mean_curve(own)
            if not times:
                continue
            x = [t / scale for t in times]
            label = f"{display_name(algorithm)} (n={len(own)})"
            ax.plot(x, [100 * a for a in accs], color=color(algorithm), marker=".", label=label,
                    linestyle="--" if "_" in algorithm else "-")
            if len(own) > 1:
                low, high = [100 * (a - s) for a, s in zip(accs, stds)], [100 * (a + s) for a, s in zip(accs, stds)]
                ax.fill_between(x, low, high, color=color(algorithm), alpha=0.15, linewidth=0)
        ax.set_title(recipe)
        ax.set_xlabel(f"wall-clock time ({unit})")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle("Figure 4: accuracy against wall-clock time\n(mean over seeds, band of one std)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(payloads: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Draw Figure 3 (images/s per algorithm, ratio to SGD on each bar) to a PNG.

    One panel per model of each ``benchmarks/throughput.py`` results file; the whiskers span the
    fastest and the slowest repetition.
    """
    plt = _pyplot()
    panels = [(payload, model, rows) for payload in payloads for model, rows in throughput_rows(payload).items()]
    width = max((len(rows) for _, _, rows in panels), default=1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.0 * width + 2), 4.2 * len(panels)), squeeze=False)
    for ax, (payload, model, rows) in zip(axes[:, 0], panels, strict=True):
        names = [display_name(a) for a, _ in rows]
        medians = [entry["images_per_s_median"] for _, entry in rows]
        errors = [[m - e["min"] for m, (_, e) in zip(medians, rows)],
                  [e["max"] - m for m, (_, e) in zip(medians, rows)]]  # whiskers: slowest and fastest repetition
        bars = ax.bar(range(len(rows)), medians, yerr=errors, capsize=3, color=[color(a) for a, _ in rows],
                      edgecolor="black", linewidth=0.5, error_kw={"elinewidth": 0.8})
        for bar, (_, entry) in zip(bars, rows):
            ax.annotate(f"{entry['ratio_to_sgd']:.2f}×", (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2),
                        ha="center", va="center", fontsize="small", fontweight="bold", color="white",
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "black", "alpha": 0.55, "linewidth": 0})
        ax.set_xticks(range(len(rows)), names, rotation=25, ha="right")
        ax.set_ylabel("images / s")
        ax.set_title(f"{model}: {throughput_title(payload)}\nlabels: × SGD (ratio of medians)", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Figure 3: training throughput", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["COLORS", "color", "mean_curve", "plot_accuracy_vs_time", "plot_throughput"]
