"""``asyncsam-report``: Table 4.1, Table 4.2 and Figure 4 of the paper from ``asyncsam-train`` runs.

Usage::

    asyncsam-report multirun/ outputs/ --out results.md --plot figure4.png

Every ``summary.json`` under the given directories is one run. The report prints, as Markdown:

* Table 4.1's form: one row per algorithm, one column per recipe, mean +- std over seeds of the
  best validation accuracy (or the final one, ``--metric final``);
* the mean +- std wall-clock time per epoch in the same layout;
* Table 4.2's form: per recipe, algorithm and hardware, the ascent and descent devices, b, b',
  b/b', epoch time and images/s.

``--plot`` draws Figure 4: validation accuracy against wall-clock time, one panel per recipe, one
line per run, read from each run's ``metrics.csv`` (the ``time/elapsed_s`` column that
``asyncsam-train`` logs with every validation), or from ``summary.json`` when there is no CSV.
The std is the sample standard deviation (n - 1); a cell of one run shows no std.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Rows and columns come in the paper's order; anything else follows, sorted.
ALGORITHM_ORDER = ("sgd", "sam", "asyncsam")
ALGORITHM_NAMES = {"sgd": "SGD", "sam": "SAM", "asyncsam": "AsyncSAM"}
RECIPE_ORDER = (
    "cifar10_resnet20",
    "cifar100_wrn28_10",
    "flowers102_wrn16_8",
    "speech_commands_cnn",
    "cifar100_vit_b16",
    "tinyimagenet_resnet50",
    "digits",
)
_COLORS = {"sgd": "tab:blue", "sam": "tab:orange", "asyncsam": "tab:green"}


@dataclass(frozen=True)
class Run:
    """One finished training run: its directory and its ``summary.json``."""

    directory: Path
    summary: dict[str, Any]

    @property
    def recipe(self) -> str:
        """The recipe name, ``"?"`` if the summary lacks it."""
        return str(self.summary.get("recipe") or "?")

    @property
    def algorithm(self) -> str:
        """The algorithm name, ``"?"`` if the summary lacks it."""
        return str(self.summary.get("algorithm") or "?")


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run whose ``summary.json`` lies in or under ``paths``, each found once.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    runs: dict[Path, Run] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"run directory '{path}' does not exist")
        files = [path] if path.is_file() else sorted(path.rglob("summary.json"))
        for file in files:
            runs.setdefault(file.resolve(), Run(file.parent, json.loads(file.read_text())))
    return list(runs.values())


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (``None`` for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: Sequence[float], scale: float, unit: str, digits: int) -> str:
    if not values:
        return "–"
    mean, std = mean_std([v * scale for v in values])
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "") + unit
    return f"{text} (n={len(values)})"


def grid_table(runs: Sequence[Run], value: Callable[[Run], float | None], scale: float, unit: str, digits: int) -> str:
    """Markdown table: a row per algorithm, a column per recipe, mean ± std over runs.

    Args:
        runs: The runs to tabulate.
        value: What to read from a run (``None`` skips the run for that cell).
        scale: Multiplies each value (100 for accuracies shown in percent).
        unit: Appended to each cell.
        digits: Decimals shown.
    """
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        v = value(run)
        if v is not None:
            cells[(run.algorithm, run.recipe)].append(float(v))
    algorithms = _ordered((r.algorithm for r in runs), ALGORITHM_ORDER)
    recipes = _ordered((r.recipe for r in runs), RECIPE_ORDER)
    lines = [
        "| Algorithm | " + " | ".join(recipes) + " |",
        "|---|" + "---|" * len(recipes),
    ]
    for algorithm in algorithms:
        row = [_cell(cells.get((algorithm, recipe), []), scale, unit, digits) for recipe in recipes]
        lines.append(f"| {ALGORITHM_NAMES.get(algorithm, algorithm)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def hardware_table(runs: Sequence[Run]) -> str:
    """Markdown table in Table 4.2's form: per recipe, algorithm and devices, b/b' and speed."""
    groups: dict[tuple[str, str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        s = run.summary
        descent = s.get("descent_device") or s.get("gpu") or s.get("cpu") or s.get("device") or "?"
        ascent = s.get("ascent_device") or "–"
        groups[(run.recipe, run.algorithm, str(ascent), str(descent))].append(run)
    lines = [
        "| Recipe | Algorithm | Grad. ascent | Grad. descent | b | b' | b/b' | Epoch time | Images/s | Best val. acc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    recipes = _ordered((k[0] for k in groups), RECIPE_ORDER)
    for recipe in recipes:
        keys = [k for k in groups if k[0] == recipe]
        for algorithm in _ordered((k[1] for k in keys), ALGORITHM_ORDER):
            for key in sorted(k for k in keys if k[1] == algorithm):
                group = groups[key]
                b = group[0].summary.get("batch_size")
                ascent = [r.summary["ascent_batch_size"] for r in group if r.summary.get("ascent_batch_size")]
                b_prime = f"{statistics.fmean(ascent):.0f}" if ascent else "–"
                ratio = f"{b / statistics.fmean(ascent):.1f}×" if ascent and b else "–"

                def values(key: str, group: list[Run] = group) -> list[float]:
                    return [float(r.summary[key]) for r in group if r.summary.get(key) is not None]

                lines.append(
                    f"| {recipe} | {ALGORITHM_NAMES.get(algorithm, algorithm)} | {key[2]} | {key[3]} | {b if b else '–'} | "
                    f"{b_prime} | {ratio} | {_cell(values('epoch_time_s'), 1, ' s', 2)} | "
                    f"{_cell(values('train_images_per_s'), 1, '', 0)} | {_cell(values('val_acc_best'), 100, '%', 2)} |"
                )
    return "\n".join(lines)


def render(runs: Sequence[Run], metric: str = "best") -> str:
    """The whole Markdown report."""
    if metric not in ("best", "final"):
        raise ValueError(f"metric must be 'best' or 'final', got {metric!r}.")
    key = f"val_acc_{metric}"
    return (
        "\n\n".join(
            [
                f"## Validation accuracy ({metric}), mean ± std over seeds (Table 4.1)",
                grid_table(runs, lambda r: r.summary.get(key), 100, "%", 2),
                "## Wall-clock time per epoch (validation included), mean ± std over seeds",
                grid_table(runs, lambda r: r.summary.get("epoch_time_s"), 1, " s", 2),
                "## Ascent batch size and speed per device (Table 4.2)",
                hardware_table(runs),
            ]
        )
        + "\n"
    )


def validation_curve(run: Run) -> tuple[list[float], list[float]]:
    """(elapsed seconds, validation accuracy) of each validation of a run.

    Read from ``metrics.csv`` (rows with both ``time/elapsed_s`` and ``val/acc``), else from the
    ``val_history`` of ``summary.json``.
    """
    path = run.directory / "metrics.csv"
    times: list[float] = []
    accs: list[float] = []
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                t, acc = row.get("time/elapsed_s"), row.get("val/acc")
                if t and acc:
                    times.append(float(t))
                    accs.append(float(acc))
    if not times:
        for t, acc in run.summary.get("val_history") or []:
            times.append(float(t))
            accs.append(float(acc))
    return times, accs


def plot(runs: Sequence[Run], path: str | Path) -> None:
    """Draw Figure 4 (validation accuracy vs wall-clock time, a panel per recipe) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    recipes = _ordered((r.recipe for r in runs), RECIPE_ORDER)
    fig, axes = plt.subplots(1, len(recipes), figsize=(5 * len(recipes), 4), squeeze=False)
    for ax, recipe in zip(axes[0], recipes, strict=True):
        recipe_runs = [r for r in runs if r.recipe == recipe]
        longest = max((max(validation_curve(r)[0], default=0.0) for r in recipe_runs), default=0.0)
        scale, unit = (60.0, "min") if longest > 600 else (1.0, "s")
        labelled: set[str] = set()
        for run in sorted(recipe_runs, key=lambda r: (r.algorithm, str(r.summary.get("seed")))):
            times, accs = validation_curve(run)
            if not times:
                continue
            name = ALGORITHM_NAMES.get(run.algorithm, run.algorithm)
            ax.plot(
                [t / scale for t in times],
                [100 * a for a in accs],
                color=_COLORS.get(run.algorithm),
                alpha=0.8,
                marker=".",
                label=None if run.algorithm in labelled else name,
            )
            labelled.add(run.algorithm)
        ax.set_title(recipe)
        ax.set_xlabel(f"wall-clock time ({unit})")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``asyncsam-report``."""
    parser = argparse.ArgumentParser(
        prog="asyncsam-report", description="Table 4.1 / 4.2 and Figure 4 from asyncsam-train run directories."
    )
    parser.add_argument("run_dirs", nargs="+", help="run directories, searched recursively for summary.json")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--plot", type=Path, help="draw validation accuracy vs wall-clock time to this PNG")
    parser.add_argument("--metric", choices=("best", "final"), default="best", help="accuracy to tabulate")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.run_dirs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not runs:
        parser.error(f"no summary.json found under {', '.join(args.run_dirs)}")
    report = render(runs, args.metric)
    sys.stdout.write(report)
    if args.out:
        args.out.write_text(report)
    if args.plot:
        plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
