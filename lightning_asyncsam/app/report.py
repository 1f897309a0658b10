"""``asyncsam-report``: Tables 4.1 and 4.2 and Figures 3 and 4 of the paper, for the whole SAM family.

Usage::

    asyncsam-report multirun/ outputs/ --out results.md --plot figure4.png
    asyncsam-report benchmarks/results/accuracy_digits_noise.json --metric final --plot figure4.png
    asyncsam-report --throughput benchmarks/results/throughput_cpu.json --figure3 figure3.png

Every ``summary.json`` under the given directories is one ``asyncsam-train`` run; a results file of
``benchmarks/accuracy.py`` given by name adds each of its runs (its name is the recipe column).
The report prints, as Markdown:

* Table 4.1's form: one row per algorithm, one column per recipe, mean +- std over seeds of the
  best validation accuracy (or the final one, ``--metric final``);
* the mean +- std wall-clock time per epoch in the same layout;
* Table 4.2's form: per recipe, algorithm and hardware, the ascent and descent devices, b, b',
  b/b', epoch time and images/s.

* with ``--throughput`` (results files of ``benchmarks/throughput.py``), Figure 3's numbers:
  images/s per algorithm and the ratio to SGD.

``--plot`` draws Figure 4: validation accuracy against wall-clock time, one panel per recipe, one
line per algorithm (the mean over its seeds, with a band of one std), read from each run's
``metrics.csv`` (the ``time/elapsed_s`` column that ``asyncsam-train`` logs with every validation),
or from ``summary.json`` when there is no CSV. ``--figure3`` draws Figure 3 as a bar chart.
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

#: Rows and columns come in the paper's order (Table 4.1); anything else follows, sorted.
ALGORITHM_ORDER = ("sgd", "sam", "asam", "gsam", "esam", "looksam", "mesa", "aesam", "asyncsam")
ALGORITHM_NAMES = {
    "sgd": "SGD",
    "sam": "SAM",
    "asam": "ASAM",
    "gsam": "GSAM",
    "esam": "ESAM",
    "looksam": "LookSAM",
    "mesa": "MESA",
    "aesam": "AE-SAM",
    "asyncsam": "AsyncSAM",
}
RECIPE_ORDER = (
    "cifar10_resnet20",
    "cifar100_wrn28_10",
    "flowers102_wrn16_8",
    "speech_commands_cnn",
    "cifar100_vit_b16",
    "tinyimagenet_resnet50",
    "digits",
)
#: Variants of a member (``asyncsam_auto``, ``asyncsam_next_b/4``) say what differs in brackets.
_VARIANT_NAMES = {"b": "b' = b", "auto": "b' auto", "prev": "previous", "next": "next", "b/4": "b' = b/4"}


def display_name(algorithm: str) -> str:
    """The name a table or figure shows for an ``algorithm=`` config or a benchmark's variant of it.

    Example::

        >>> display_name("aesam"), display_name("asyncsam_auto"), display_name("asyncsam_next_b/4")
        ('AE-SAM', "AsyncSAM (b' auto)", "AsyncSAM (next, b' = b/4)")
    """
    base, _, variant = algorithm.partition("_")
    if base not in ALGORITHM_NAMES:
        return algorithm
    if not variant:
        return ALGORITHM_NAMES[base]
    parts = [_VARIANT_NAMES.get(v, f"b' = {v}" if v.isdigit() else v) for v in variant.split("_")]
    return f"{ALGORITHM_NAMES[base]} ({', '.join(parts)})"


def order_algorithms(values: Iterable[str]) -> list[str]:
    """Table 4.1's order, each member's variants right after it, unknown names last (sorted).

    Example::

        >>> order_algorithms(["asyncsam_auto", "zeta", "asyncsam", "gsam", "sgd"])
        ['sgd', 'gsam', 'asyncsam', 'asyncsam_auto', 'zeta']
    """

    def key(name: str) -> tuple[int, str, str]:
        base, _, variant = name.partition("_")
        rank = ALGORITHM_ORDER.index(base) if base in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
        return (rank, base if rank < len(ALGORITHM_ORDER) else name, variant)

    return sorted(set(values), key=key)


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

    @property
    def has_metrics_csv(self) -> bool:
        """Whether the curve comes from an ``asyncsam-train`` ``metrics.csv`` (not from a benchmark file)."""
        return not self.summary.get("benchmark") and (self.directory / "metrics.csv").is_file()


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run whose ``summary.json`` lies in or under ``paths``, each found once.

    A path to another ``.json`` file is read as a results file of ``benchmarks/accuracy.py``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a ``.json`` file is neither a ``summary.json`` nor an accuracy benchmark's results.
    """
    runs: dict[tuple[Path, str, int], Run] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"run directory '{path}' does not exist")
        if path.is_file() and path.name != "summary.json":
            for i, run in enumerate(benchmark_runs(path)):
                runs.setdefault((path.resolve(), run.algorithm, i), run)
            continue
        files = [path] if path.is_file() else sorted(path.rglob("summary.json"))
        for file in files:
            runs.setdefault((file.resolve(), "", 0), Run(file.parent, json.loads(file.read_text())))
    return list(runs.values())


def benchmark_runs(path: Path) -> list[Run]:
    """The runs of a ``benchmarks/accuracy.py`` results file, as ``summary.json`` would hold them.

    The recipe column is the file's name (``settings.name``). ``val_acc_final`` is the test
    accuracy after the last epoch, as the benchmark's own table gives it; ``val_acc_best`` is the
    best of its per-epoch curve.

    Raises:
        ValueError: the file is not such a results file.
    """
    wrong = ValueError(f"'{path}' is neither a summary.json nor a results file of benchmarks/accuracy.py")
    try:
        payload = json.loads(path.read_text())
        settings, per_algorithm = payload["settings"], payload["runs"]
        if not all("test_acc" in r for results in per_algorithm.values() for r in results):
            raise wrong
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise wrong from err
    env = payload.get("environment") or {}
    runs = []
    for algorithm, results in per_algorithm.items():
        for seed, result in enumerate(results):
            history = result.get("val_history") or []
            summary = {
                "benchmark": True,
                "recipe": settings.get("name") or path.stem,
                "algorithm": algorithm,
                "seed": seed,
                "val_acc_final": result["test_acc"],
                "val_acc_best": max([acc for _, acc in history], default=result["test_acc"]),
                "val_history": history,
                "epoch_time_s": result.get("epoch_s"),
                "first_epoch_time_s": result.get("first_epoch_s"),
                "fit_time_s": result.get("wall_s"),
                "batch_size": settings.get("batch_size"),
                "ascent_batch_size": result.get("ascent_batch_size"),
                "descent_device": env.get("cpu"),
                "ascent_device": env.get("cpu") if result.get("ascent_batch_size") else None,
            }
            runs.append(Run(path.parent, summary))
    return runs


def _ordered(values: Iterable[str], order: Sequence[str]) -> list[str]:
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def order_recipes(values: Iterable[str]) -> list[str]:
    """Table 4.1's column order, then any other recipe (a benchmark's, a custom one), sorted.

    Example::

        >>> order_recipes(["digits", "accuracy_digits_noise", "cifar10_resnet20"])
        ['cifar10_resnet20', 'digits', 'accuracy_digits_noise']
    """
    return _ordered(values, RECIPE_ORDER)


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
    algorithms = order_algorithms(r.algorithm for r in runs)
    recipes = order_recipes(r.recipe for r in runs)
    lines = [
        "| Algorithm | " + " | ".join(recipes) + " |",
        "|---|" + "---|" * len(recipes),
    ]
    for algorithm in algorithms:
        row = [_cell(cells.get((algorithm, recipe), []), scale, unit, digits) for recipe in recipes]
        lines.append(f"| {display_name(algorithm)} | " + " | ".join(row) + " |")
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
    recipes = order_recipes(k[0] for k in groups)
    for recipe in recipes:
        keys = [k for k in groups if k[0] == recipe]
        for algorithm in order_algorithms(k[1] for k in keys):
            for key in sorted(k for k in keys if k[1] == algorithm):
                group = groups[key]
                b = group[0].summary.get("batch_size")
                ascent = [r.summary["ascent_batch_size"] for r in group if r.summary.get("ascent_batch_size")]
                b_prime = f"{statistics.fmean(ascent):.0f}" if ascent else "–"
                ratio = f"{b / statistics.fmean(ascent):.1f}×" if ascent and b else "–"

                def values(key: str, group: list[Run] = group) -> list[float]:
                    return [float(r.summary[key]) for r in group if r.summary.get(key) is not None]

                lines.append(
                    f"| {recipe} | {display_name(algorithm)} | {key[2]} | {key[3]} | {b if b else '–'} | "
                    f"{b_prime} | {ratio} | {_cell(values('epoch_time_s'), 1, ' s', 2)} | "
                    f"{_cell(values('train_images_per_s'), 1, '', 0)} | {_cell(values('val_acc_best'), 100, '%', 2)} |"
                )
    return "\n".join(lines)


def render(runs: Sequence[Run], metric: str = "best", throughput: Sequence[dict[str, Any]] = ()) -> str:
    """The whole Markdown report: the tables of ``runs``, then Figure 3's numbers of each ``throughput``."""
    if metric not in ("best", "final"):
        raise ValueError(f"metric must be 'best' or 'final', got {metric!r}.")
    key = f"val_acc_{metric}"
    parts = []
    if runs:
        parts += [
            f"## Validation accuracy ({metric}), mean ± std over seeds (Table 4.1)",
            grid_table(runs, lambda r: r.summary.get(key), 100, "%", 2),
            "## Wall-clock time per steady-state epoch (the first left out), mean ± std over seeds",
            grid_table(runs, lambda r: r.summary.get("epoch_time_s"), 1, " s", 2),
        ]
        if any(r.summary.get("first_epoch_time_s") is not None for r in runs):
            parts += [
                "## Wall-clock time of the first epoch (AsyncSAM's worker start-up included)",
                grid_table(runs, lambda r: r.summary.get("first_epoch_time_s"), 1, " s", 2),
            ]
        parts += ["## Ascent batch size and speed per device (Table 4.2)", hardware_table(runs)]
    for payload in throughput:
        parts += [f"## Throughput (Figure 3): {throughput_title(payload)}", throughput_table(payload)]
    return "\n\n".join(parts) + "\n"


def throughput_rows(payload: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per model, the ``(algorithm, summary entry)`` pairs of a ``throughput.py`` results file, in order.

    Raises:
        ValueError: the payload has no ``summary`` of ``"<model>/<algorithm>"`` entries.
    """
    summary = payload.get("summary") if isinstance(payload, dict) else None
    if not isinstance(summary, dict) or not summary or not all(
        "/" in k and isinstance(v, dict) and "images_per_s_median" in v for k, v in summary.items()
    ):
        raise ValueError("not a results file of benchmarks/throughput.py: no summary of '<model>/<algorithm>' entries")
    models: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for name, entry in summary.items():
        model, algorithm = name.split("/", 1)
        models[model][algorithm] = entry
    return {model: [(a, per[a]) for a in order_algorithms(per)] for model, per in models.items()}


def throughput_title(payload: dict[str, Any]) -> str:
    """What a throughput results file measured: accelerator, b, threads, repetitions, machine."""
    settings, env = payload.get("settings") or {}, payload.get("environment") or {}
    device = env.get("cuda") if settings.get("accelerator") == "cuda" else env.get("cpu")
    reps = settings.get("reps", "?")
    return (
        f"{settings.get('accelerator', '?')} main process ({device or '?'}), b = {settings.get('batch_size', '?')}, "
        f"median of {reps} run{'' if reps == 1 else 's'}" + ("" if payload.get("complete", True) else ", PARTIAL")
    )


def throughput_table(payload: dict[str, Any]) -> str:
    """Markdown: images/s (median [min, max]) and the ratios to SGD, per model and algorithm."""
    lines = ["| Model | Algorithm | Images/s | × SGD | × SGD, paired |", "|---|---|---|---|---|"]
    for model, rows in throughput_rows(payload).items():
        for algorithm, entry in rows:
            paired = entry.get("paired_ratios") or []
            lines.append(
                f"| {model} | {display_name(algorithm)} | {entry['images_per_s_median']:.1f} "
                f"[{entry['min']:.1f}, {entry['max']:.1f}] | {entry['ratio_to_sgd']:.2f} | "
                + (f"{statistics.median(paired):.2f} |" if paired else "– |")
            )
    return "\n".join(lines)


def validation_curve(run: Run) -> tuple[list[float], list[float]]:
    """(elapsed seconds, validation accuracy) of each validation of a run.

    Read from ``metrics.csv`` (rows with both ``time/elapsed_s`` and ``val/acc``), else from the
    ``val_history`` of ``summary.json``.
    """
    path = run.directory / "metrics.csv"
    times: list[float] = []
    accs: list[float] = []
    if run.has_metrics_csv:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``asyncsam-report``."""
    parser = argparse.ArgumentParser(
        prog="asyncsam-report",
        description="Tables 4.1 / 4.2 and Figures 3 / 4 from asyncsam-train run directories and benchmark results.",
    )
    parser.add_argument(
        "run_dirs", nargs="*", help="run directories, searched recursively for summary.json; or accuracy.py results"
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--plot", type=Path, help="draw validation accuracy vs wall-clock time to this PNG")
    parser.add_argument("--metric", choices=("best", "final"), default="best", help="accuracy to tabulate")
    parser.add_argument("--throughput", type=Path, action="append", default=[], metavar="JSON",
                        help="a results file of benchmarks/throughput.py (repeatable)")
    parser.add_argument("--figure3", type=Path, metavar="PNG", help="draw the --throughput results as bars to this PNG")
    args = parser.parse_args(argv)
    if not args.run_dirs and not args.throughput:
        parser.error("give run directories, an accuracy results file, or --throughput")
    if args.plot and not args.run_dirs:
        parser.error("--plot needs runs")
    if args.figure3 and not args.throughput:
        parser.error("--figure3 needs --throughput")
    try:
        runs = find_runs(args.run_dirs)
        throughput = [json.loads(path.read_text()) for path in args.throughput]
        for path, payload in zip(args.throughput, throughput):
            try:
                throughput_rows(payload)
            except ValueError as err:
                raise ValueError(f"--throughput '{path}': {err}") from None
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if args.run_dirs and not runs:
        parser.error(f"no summary.json found under {', '.join(args.run_dirs)}")
    report = render(runs, args.metric, throughput)
    sys.stdout.write(report)
    if args.out:
        args.out.write_text(report)
    if args.plot or args.figure3:
        from lightning_asyncsam.app import figures  # matplotlib only when a figure is asked for

        if args.plot:
            figures.plot_accuracy_vs_time(runs, args.plot)
        if args.figure3:
            figures.plot_throughput(throughput, args.figure3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
