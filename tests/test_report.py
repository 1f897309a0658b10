"""``asyncsam-report``: Table 4.1's grid, Table 4.2's rows and Figure 4, from synthetic runs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from lightning_asyncsam.app.report import find_runs, grid_table, main, mean_std, render, validation_curve

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
