"""``asyncsam-report``: Table 4.1's grid, Table 4.2's rows and Figures 3 and 4, from synthetic result files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from lightning_asyncsam.app.figures import mean_curve
from lightning_asyncsam.app.report import (
    ALGORITHM_ORDER,
    display_name,
    find_runs,
    grid_table,
    main,
    mean_std,
    render,
    throughput_table,
    validation_curve,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(
    directory: Path,
    recipe: str,
    algorithm: str,
    seed: int,
    best: float,
    epoch_s: float,
    csv_curve: bool = True,
    **extra: Any,
) -> Path:
    """A run directory as asyncsam-train leaves it: summary.json and metrics.csv."""
    directory.mkdir(parents=True)
    curve = [(epoch_s * (i + 1), best * (0.8 + 0.1 * i)) for i in range(3)]
    summary = {
        "recipe": recipe,
        "algorithm": algorithm,
        "seed": seed,
        "val_acc_best": best,
        "val_acc_final": best - 0.01,
        "epoch_time_s": epoch_s,
        "train_images_per_s": 1000.0 / epoch_s,
        "batch_size": 128,
        "ascent_batch_size": 32 if algorithm == "asyncsam" else None,
        "ascent_device": "Test CPU" if algorithm == "asyncsam" else None,
        "gpu": "Test GPU",
        "val_history": curve,
        **extra,
    }
    (directory / "summary.json").write_text(json.dumps(summary))
    if csv_curve:
        with (directory / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", "step", "time/elapsed_s", "train/loss", "val/acc"])
            writer.writeheader()
            for epoch, (t, acc) in enumerate(curve):
                writer.writerow({"epoch": epoch, "step": 10 * epoch, "train/loss": 1.0})  # a training row
                writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "time/elapsed_s": t + 0.5, "val/acc": acc})
    return directory


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    accs = {"sgd": [0.9196, 0.9226, 0.9166], "sam": [0.9253, 0.9213], "asyncsam": [0.9260, 0.9240, 0.9280]}
    for algorithm, values in accs.items():
        for seed, acc in enumerate(values):
            _write_run(root / f"{algorithm}_{seed}", "cifar10_resnet20", algorithm, seed, acc, 20.0 + seed)
    _write_run(root / "nested" / "deeper" / "digits_sgd", "digits", "sgd", 0, 0.99, 0.4, csv_curve=False)
    return root


def test_finds_every_summary_once(runs_dir: Path) -> None:
    runs = find_runs([runs_dir, runs_dir / "sgd_0", runs_dir / "sgd_0" / "summary.json"])
    assert len(runs) == 9


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        find_runs([tmp_path / "nope"])


def test_mean_and_sample_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, None)


def test_accuracy_table_has_table_4_1_layout_and_values(runs_dir: Path) -> None:
    table = grid_table(find_runs([runs_dir]), lambda r: r.summary["val_acc_best"], 100, "%", 2)
    lines = table.splitlines()
    assert lines[0] == "| Algorithm | cifar10_resnet20 | digits |"  # paper order of recipes
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["SGD", "SAM", "AsyncSAM"]  # paper order of rows
    mean, std = 100 * statistics.fmean([0.9196, 0.9226, 0.9166]), 100 * statistics.stdev([0.9196, 0.9226, 0.9166])
    assert f"| {mean:.2f} ± {std:.2f}% (n=3) | 99.00% (n=1) |" in lines[2]
    assert lines[3].endswith("| – |")  # no SAM run of digits
    assert "(n=2)" in lines[3]


def test_render_has_the_three_tables(runs_dir: Path) -> None:
    text = render(find_runs([runs_dir]))
    assert [line for line in text.splitlines() if line.startswith("|") and "---" not in line][0:1] == [
        "| Algorithm | cifar10_resnet20 | digits |"
    ]
    assert text.count("\n| Algorithm |") == 2 and text.count("\n| Recipe | Algorithm |") == 1
    assert "| cifar10_resnet20 | AsyncSAM | Test CPU | Test GPU | 128 | 32 | 4.0× |" in text
    assert "| cifar10_resnet20 | SGD | – | Test GPU | 128 | – | – |" in text
    assert "21.00 ± 1.00 s (n=3)" in text  # epoch times 20, 21, 22
    assert "98.00%" in render(find_runs([runs_dir]), metric="final")  # digits' final = best - 1 point
    with pytest.raises(ValueError, match="metric"):
        render(find_runs([runs_dir]), metric="median")


def test_curve_comes_from_metrics_csv_or_summary(runs_dir: Path) -> None:
    runs = {r.directory.name: r for r in find_runs([runs_dir])}
    times, accs = validation_curve(runs["sam_1"])
    assert times == [21.5, 42.5, 63.5]  # the CSV's values (the summary's are 0.5 s earlier)
    assert accs == pytest.approx([0.9213 * f for f in (0.8, 0.9, 1.0)])
    times, _ = validation_curve(runs["digits_sgd"])
    assert times == pytest.approx([0.4, 0.8, 1.2])


def test_cli_prints_writes_and_plots(runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "report.md", tmp_path / "figure4.png"
    assert main([str(runs_dir), "--out", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() and "| AsyncSAM |" in printed
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


def test_cli_refuses_empty_or_missing_directories(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path)])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])


#: Table 4.1's rows in the paper's order, with ASAM after SAM.
FAMILY_ROWS = ["SGD", "SAM", "ASAM", "GSAM", "ESAM", "LookSAM", "MESA", "AE-SAM", "AsyncSAM"]


def test_family_rows_come_in_table_4_1_order(tmp_path: Path) -> None:
    for i, algorithm in enumerate(reversed(ALGORITHM_ORDER)):  # written in the opposite order
        _write_run(tmp_path / algorithm, "digits", algorithm, 0, 0.9 + i / 100, 1.0)
    _write_run(tmp_path / "variant", "digits", "asyncsam_next_b/4", 0, 0.95, 1.0)
    _write_run(tmp_path / "other", "digits", "custom", 0, 0.95, 1.0)
    table = grid_table(find_runs([tmp_path]), lambda r: r.summary["val_acc_best"], 100, "%", 2)
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == [*FAMILY_ROWS, "AsyncSAM (next, b' = b/4)", "custom"]
    assert "| MESA | 92.00% (n=1) |" in table  # written third (0.92), shown seventh


@pytest.mark.parametrize(
    ("algorithm", "shown"),
    [("gsam", "GSAM"), ("aesam", "AE-SAM"), ("asyncsam_b", "AsyncSAM (b' = b)"), ("asyncsam_26", "AsyncSAM (b' = 26)"),
     ("asyncsam_prev_b", "AsyncSAM (previous, b' = b)"), ("my_method", "my_method")],
)
def test_display_names(algorithm: str, shown: str) -> None:
    assert display_name(algorithm) == shown


def _accuracy_results(path: Path) -> Path:
    """A results file as benchmarks/accuracy.py writes it: two algorithms, two seeds, per-epoch curves."""
    def run(acc: float, curve: list[list[float]], b_prime: float | None = None) -> dict[str, Any]:
        return {"test_acc": acc, "wall_s": 9.0, "epoch_s": 0.3, "first_epoch_s": 5.0, "ascent_batch_size": b_prime,
                "val_history": curve}

    payload = {
        "settings": {"name": "accuracy_digits_noise", "batch_size": 32, "epochs": 2},
        "environment": {"cpu": "Test CPU"},
        "summary": {},
        "runs": {
            "sgd": [run(0.70, [[1.0, 0.72], [2.0, 0.70]]), run(0.72, [[1.1, 0.60], [2.1, 0.72]])],
            "asyncsam": [run(0.80, [[6.0, 0.75], [7.0, 0.80]], 8.0), run(0.78, [[6.5, 0.81], [7.5, 0.78]], 8.0)],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def test_accuracy_benchmark_results_become_runs(tmp_path: Path) -> None:
    results = _accuracy_results(tmp_path / "results" / "accuracy_digits_noise.json")
    (results.parent / "metrics.csv").write_text("time/elapsed_s,val/acc\n99,0.1\n")  # another run's CSV: not read
    runs = find_runs([results, results])  # given twice, counted once
    assert sorted((r.algorithm, r.summary["seed"]) for r in runs) == [("asyncsam", 0), ("asyncsam", 1), ("sgd", 0),
                                                                      ("sgd", 1)]
    assert {r.recipe for r in runs} == {"accuracy_digits_noise"}
    final = grid_table(runs, lambda r: r.summary["val_acc_final"], 100, "%", 2)
    assert f"| SGD | 71.00 ± {100 * statistics.stdev([0.70, 0.72]):.2f}% (n=2) |" in final  # the benchmark's own table
    best = grid_table(runs, lambda r: r.summary["val_acc_best"], 100, "%", 2)
    assert "| AsyncSAM | 80.50 ±" in best  # the best epoch of each curve: 0.80 and 0.81
    asyncsam = next(r for r in runs if r.algorithm == "asyncsam" and r.summary["seed"] == 1)
    assert validation_curve(asyncsam) == ([6.5, 7.5], [0.81, 0.78])
    text = render(runs, metric="final")
    assert "| accuracy_digits_noise | AsyncSAM | Test CPU | Test CPU | 32 | 8 | 4.0× |" in text
    assert "## Wall-clock time of the first epoch" in text and "| 5.00 ± 0.00 s (n=2) |" in text


def test_a_json_that_is_no_result_is_an_error(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {}, "runs": {"sgd": [{"images_per_s": 1.0}]}}))
    with pytest.raises(ValueError, match="neither a summary.json nor"):
        find_runs([other])
    with pytest.raises(SystemExit) as info:
        main([str(other)])
    assert info.value.code == 2


def _throughput_results(path: Path, complete: bool = True) -> Path:
    """A results file as benchmarks/throughput.py writes it, in its JSON layout."""
    speeds = {"sgd": [100.0, 110.0, 90.0], "sam": [50.0, 52.0, 47.0], "asyncsam_auto": [95.0, 99.0, 90.0],
              "mesa": [80.0, 85.0, 82.0]}
    sgd = statistics.median(speeds["sgd"])
    summary = {
        f"resnet20/{a}": {"images_per_s_median": statistics.median(v), "min": min(v), "max": max(v),
                          "ratio_to_sgd": statistics.median(v) / sgd,
                          "paired_ratios": [x / y for x, y in zip(v, speeds["sgd"])], "runs": 3}
        for a, v in speeds.items()
    }
    payload = {
        "settings": {"accelerator": "cpu", "batch_size": 128, "reps": 3},
        "environment": {"cpu": "Test CPU", "cuda": None, "git_sha": "abc"},
        "complete": complete,
        "summary": summary,
        "runs": {"resnet20": {a: [{"images_per_s": x} for x in v] for a, v in speeds.items()}},
    }
    path.write_text(json.dumps(payload))
    return path


def test_throughput_table_has_figure_3_numbers_in_family_order(tmp_path: Path) -> None:
    payload = json.loads(_throughput_results(tmp_path / "t.json").read_text())
    lines = throughput_table(payload).splitlines()
    assert [line.split("|")[2].strip() for line in lines[2:]] == ["SGD", "SAM", "MESA", "AsyncSAM (b' auto)"]
    assert lines[3] == "| resnet20 | SAM | 50.0 [47.0, 52.0] | 0.50 | 0.50 |"  # paired: 0.5, 0.47, 0.52
    assert "PARTIAL" not in render([], throughput=[payload])
    partial = json.loads(_throughput_results(tmp_path / "p.json", complete=False).read_text())
    assert "PARTIAL" in render([], throughput=[partial])


def test_cli_draws_figure_3_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results, png = _throughput_results(tmp_path / "throughput_cpu.json"), tmp_path / "figure3.png"
    assert main(["--throughput", str(results), "--throughput", str(results), "--figure3", str(png)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("## Throughput (Figure 3): cpu main process (Test CPU), b = 128, median of 3 runs") == 2
    assert "Table 4.1" not in printed
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give run directories"),
        (["--figure3", "f.png", "RUNS"], "--figure3 needs --throughput"),
        (["--throughput", "ACCURACY"], "not a results file of benchmarks/throughput.py"),
        (["--throughput", "ACCURACY", "--plot", "f.png"], "--plot needs runs"),
    ],
)
def test_cli_refuses_what_it_cannot_draw(
    argv: list[str], message: str, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accuracy = _accuracy_results(tmp_path / "a.json")
    argv = [{"RUNS": str(runs_dir), "ACCURACY": str(accuracy)}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_figure_4_averages_seeds_over_their_common_validations() -> None:
    times, accs, stds = mean_curve([([1.0, 2.0, 3.0], [0.5, 0.7, 0.8]), ([3.0, 4.0], [0.7, 0.9])])
    assert times == [2.0, 3.0] and accs == pytest.approx([0.6, 0.8])
    assert stds == pytest.approx([statistics.stdev([0.5, 0.7]), statistics.stdev([0.7, 0.9])])
    assert mean_curve([([1.0], [0.5])]) == ([1.0], [0.5], [0.0])
    assert mean_curve([]) == ([], [], [])
