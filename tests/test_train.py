"""``train(cfg)`` end to end: the run directory, resuming, every recipe on tiny data, the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from fixtures_data import (
    CPU_TEST_OVERRIDES,
    TINY_VIT,
    compose_train,
    save_tiny_vit_weights,
    write_cifar10,
    write_cifar100,
    write_flowers102,
    write_speech_commands,
    write_tiny_imagenet,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_asyncsam
from lightning_asyncsam.app.classifier import Classifier
from lightning_asyncsam.app.report import RECIPE_ORDER
from lightning_asyncsam.app.data import DatasetNotFoundError
from lightning_asyncsam.app.train import git_sha, package_version, train

ALGORITHMS = ("sgd", "sam", "asyncsam")
SUMMARY_KEYS = {
    "recipe",
    "algorithm",
    "rho",
    "seed",
    "val_acc_final",
    "val_acc_best",
    "val_history",
    "epochs",
    "epoch_time_s",
    "first_epoch_time_s",
    "epoch_times_s",
    "train_images_per_s",
    "fit_time_s",
    "batch_size",
    "ascent_batch_size",
    "version",
    "git_sha",
    "device",
    "cpu",
    "cpu_count",
}
#: Digits, shortened: 2 epochs of 6 batches.
SHORT_DIGITS = [
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=2",
    "++trainer.limit_train_batches=6",
    "++trainer.limit_val_batches=3",
    "data.batch_size=16",
    *CPU_TEST_OVERRIDES,
]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_digits_run_writes_the_run_directory(algorithm: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = train(compose_train([f"algorithm={algorithm}", "seed=3", *SHORT_DIGITS], run))

    assert SUMMARY_KEYS <= summary.keys()
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (summary["recipe"], summary["algorithm"], summary["seed"], summary["epochs"]) == ("digits", algorithm, 3, 2)
    assert summary["rho"] == (None if algorithm == "sgd" else 0.1)
    assert summary["version"] == lightning_asyncsam.__version__
    assert summary["git_sha"] is None or len(summary["git_sha"]) == 40
    assert summary["train_images_per_s"] > 0 and summary["epoch_time_s"] > 0 and len(summary["epoch_times_s"]) == 2
    # Steady state: the epochs after the first (which holds the start-up), here the second alone.
    assert summary["epoch_time_s"] == summary["epoch_times_s"][1]
    assert summary["first_epoch_time_s"] == summary["epoch_times_s"][0]
    if algorithm == "asyncsam":
        assert isinstance(summary["ascent_batch_size"], int) and 1 <= summary["ascent_batch_size"] <= 16
        assert summary["ascent_device"] == summary["cpu"] and summary["ascent_memory_format"] == "auto"
    else:
        assert summary["ascent_batch_size"] is None and summary["ascent_device"] is None
        assert summary["ascent_memory_format"] is None
    assert summary["descent_device"] == summary["cpu"]  # trained on the CPU here

    # The resolved config: plain values, no interpolation left.
    resolved = (run / "config_resolved.yaml").read_text()
    assert "${" not in resolved and f"output_dir: {run}" in resolved

    # metrics.csv pairs every validation accuracy with the wall-clock time it was reached at.
    rows = [r for r in _metrics(run) if r.get("val/acc")]
    assert len(rows) == 2 and all(r["time/elapsed_s"] and r["val/loss"] for r in rows)
    times = [float(r["time/elapsed_s"]) for r in rows]
    assert times[0] > 0 and times[1] > times[0]
    accs = [float(r["val/acc"]) for r in rows]
    assert summary["val_acc_best"] == pytest.approx(max(accs)) and summary["val_acc_final"] == pytest.approx(accs[-1])
    assert [t for t, _ in summary["val_history"]] == pytest.approx(times, abs=1e-2)
    assert any(r.get("train/loss") for r in _metrics(run))

    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-epoch") for name in checkpoints)


def test_training_learns_digits(tmp_path: Path) -> None:
    """Three short epochs of SGD must beat chance (10 %) by far: the pipeline really trains."""
    summary = train(
        compose_train(["algorithm=sgd", "trainer.max_epochs=3", "logger=csv", *CPU_TEST_OVERRIDES], tmp_path)
    )
    assert summary["val_acc_best"] > 0.8


def test_resume_continues_epochs_and_clock(tmp_path: Path) -> None:
    first = train(compose_train(["algorithm=sgd", *SHORT_DIGITS, "trainer.max_epochs=1"], tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    second = train(
        compose_train(["algorithm=sgd", *SHORT_DIGITS, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "b")
    )
    assert first["epochs"] == 1 and second["epochs"] == 2
    assert second["val_history"][0] == pytest.approx(first["val_history"][0], abs=1e-3)
    assert second["val_history"][1][0] > first["val_history"][0][0]


def test_logger_can_be_switched_off(tmp_path: Path) -> None:
    summary = train(compose_train(["algorithm=sgd", *SHORT_DIGITS, "~logger"], tmp_path))
    assert not (tmp_path / "metrics.csv").exists()
    assert len(summary["val_history"]) == 2  # Figure 4 can still be drawn from summary.json


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_train(
        ["recipe=cifar10_resnet20", "algorithm=sgd", f"paths.data_dir={tmp_path / 'none'}", *CPU_TEST_OVERRIDES],
        tmp_path / "run",
    )
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        train(cfg)


def test_bad_model_argument_is_not_wrapped_by_hydra(tmp_path: Path) -> None:
    cfg = compose_train(["recipe=cifar10_resnet20", "algorithm=sgd", "model.depth=21", *CPU_TEST_OVERRIDES], tmp_path)
    with pytest.raises(ValueError, match="depth"):
        train(cfg)


# ----------------------------------------------------------------------------- the LightningModule
def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_classifier_validation_metrics_are_exact() -> None:
    """Accuracy and the sample-weighted loss over unequal batches, from logits we choose."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 1, 1, 1])  # the third prediction is wrong: accuracy 3/4
    module = Classifier(net=nn.Identity(), num_classes=2, optimizer=_sgd)
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)  # batches of 3 and 1
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(module, loader, verbose=False)
    assert metrics["val/acc"] == pytest.approx(0.75)
    assert metrics["val/loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)


def test_classifier_optimizer_and_scheduler() -> None:
    net = nn.Linear(3, 2)
    net.bias.requires_grad_(False)  # frozen parameters are left out of the optimizer
    module = Classifier(
        net=net,
        num_classes=2,
        optimizer=_sgd,
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=5),
        scheduler_interval="step",
    )
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert [p for g in optimizer.param_groups for p in g["params"]] == [net.weight]
    assert optimizer.defaults["momentum"] == 0.9
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(Classifier(net=net, num_classes=2, optimizer=_sgd).configure_optimizers(), torch.optim.SGD)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"optimizer": "sgd"}, TypeError, "optimizer"),
        ({"scheduler": 3}, TypeError, "scheduler"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
    ],
)
def test_classifier_arguments(kwargs: dict, error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=name):
        Classifier(**{"net": nn.Identity(), "num_classes": 2, "optimizer": _sgd, **kwargs})


# ----------------------------------------------------------------------------- every recipe, tiny
def _tiny_recipe(recipe: str, data_dir: Path) -> list[str]:
    """Write ``recipe``'s dataset in tiny form and return overrides that shrink its model for a CPU test."""
    if recipe == "cifar10_resnet20":
        write_cifar10(data_dir)
        return []
    if recipe == "cifar100_wrn28_10":
        write_cifar100(data_dir)
        return ["model.depth=10", "model.widen_factor=1"]
    if recipe == "flowers102_wrn16_8":
        write_flowers102(data_dir)
        return ["model.depth=10", "model.widen_factor=1", "data.image_size=32"]
    if recipe == "speech_commands_cnn":
        write_speech_commands(data_dir, clips_per_word=1)
        return []
    if recipe == "cifar100_vit_b16":
        write_cifar100(data_dir)
        save_tiny_vit_weights(data_dir / "weights" / "tiny_vit.pth", **TINY_VIT)
        dims = [f"model.{k}={v}" for k, v in TINY_VIT.items()]
        return [*dims, "data.image_size=32", f"model.weights={data_dir / 'weights' / 'tiny_vit.pth'}"]
    if recipe == "tinyimagenet_resnet50":
        write_tiny_imagenet(data_dir)
        return ["model.arch=resnet18", "model.stem=imagenet"]
    raise AssertionError(recipe)


PAPER_RECIPES = [r for r in RECIPE_ORDER if r != "digits"]
#: SGD and SAM are quick; AsyncSAM starts a worker process (about 8 s here), so it runs with the slow
#: tests, except on digits (test_digits_run_writes_the_run_directory).
RECIPE_CASES = [
    pytest.param(r, a, marks=pytest.mark.slow if a == "asyncsam" else []) for r in PAPER_RECIPES for a in ALGORITHMS
]


@pytest.mark.parametrize(("recipe", "algorithm"), RECIPE_CASES)
def test_recipe_fast_dev_run(recipe: str, algorithm: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    overrides = _tiny_recipe(recipe, data_dir)
    cfg = compose_train(
        [
            f"recipe={recipe}",
            f"algorithm={algorithm}",
            f"paths.data_dir={data_dir}",
            "data.batch_size=4",
            "++trainer.fast_dev_run=1",
            *CPU_TEST_OVERRIDES,
            *overrides,
        ],
        tmp_path / "run",
    )
    summary = train(cfg)
    assert (summary["recipe"], summary["algorithm"], summary["epochs"]) == (recipe, algorithm, 1)
    assert 0.0 <= summary["val_acc_final"] <= 1.0
    assert (summary["ascent_batch_size"] is not None) == (algorithm == "asyncsam")


# ----------------------------------------------------------------------------- provenance helpers
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_sha_of_a_repository_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    repo.mkdir()
    plain.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "GIT_CEILING_DIRECTORIES": str(tmp_path),
    }
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, env=env)
    expected = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repository above tmp_path
    assert git_sha(plain, repo) == expected.strip()
    assert git_sha(plain) is None


def test_package_version_falls_back_to_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert package_version() == lightning_asyncsam.__version__
    monkeypatch.setattr(lightning_asyncsam, "__version__", "")
    import importlib.metadata

    assert package_version() == importlib.metadata.version("lightning-asyncsam")


# ----------------------------------------------------------------------------- the command line
def _run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_default_command_runs_digits_asyncsam_in_under_two_minutes(tmp_path: Path) -> None:
    """``asyncsam-train`` with no arguments (only the run dir set): the README's promise."""
    start = time.perf_counter()
    out = _run_cli([sys.executable, "-m", "lightning_asyncsam.app.train", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["recipe"], summary["algorithm"], summary["epochs"]) == ("digits", "asyncsam", 15)
    assert summary["val_acc_best"] > 0.9
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert elapsed < 120, f"took {elapsed:.0f} s"


@pytest.mark.slow
def test_multirun_then_report(tmp_path: Path) -> None:
    entry = shutil.which("asyncsam-train")
    cmd = [entry] if entry else [sys.executable, "-m", "lightning_asyncsam.app.train"]
    out = _run_cli(
        [
            *cmd,
            "-m",
            "algorithm=sgd,sam",
            "seed=0,1",
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=5",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "callbacks.progress_bar.refresh_rate=0",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = sorted((tmp_path / "sweep").rglob("summary.json"))
    assert len(summaries) == 4
    assert {(json.loads(p.read_text())["algorithm"], json.loads(p.read_text())["seed"]) for p in summaries} == {
        ("sgd", 0),
        ("sgd", 1),
        ("sam", 0),
        ("sam", 1),
    }
    report = _run_cli(
        [sys.executable, "-m", "lightning_asyncsam.app.report", str(tmp_path / "sweep"), "--plot", str(tmp_path / "f.png")],
        tmp_path,
    )
    assert report.returncode == 0, report.stderr
    assert "| SGD |" in report.stdout and "(n=2)" in report.stdout
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
