"""The Hydra configs: every recipe and algorithm composes to Tables A.1/A.2, overrides combine, the wheel ships them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark
from fixtures_data import CPU_TEST_OVERRIDES, compose_train
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.strategies import StrategyRegistry
from omegaconf import OmegaConf

import lightning_asyncsam

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"

# Table A.1 (b, initial lr, epochs) with the data and model each recipe must select, and
# Table 4.1's SGD / SAM / AsyncSAM accuracies that each recipe's header must quote.
PAPER = {
    "cifar10_resnet20": ("cifar10", "CifarResNet", 128, 0.1, 150, ("91.96 +- 0.3", "92.53 +- 0.4", "92.60 +- 0.2")),
    "cifar100_wrn28_10": ("cifar100", "WideResNet", 128, 0.1, 200, ("79.47 +- 0.5", "80.13 +- 0.4", "80.67 +- 0.5")),
    "flowers102_wrn16_8": ("flowers102", "WideResNet", 40, 0.1, 100, ("69.82 +- 0.2", "73.87 +- 0.6", "77.70 +- 1.1")),
    "speech_commands_cnn": ("speech", "speech_cnn", 128, 0.1, 10, ("95.96 +- 0.4", "97.45 +- 0.5", "97.64 +- 1.2")),
    "cifar100_vit_b16": (
        "cifar100",
        "vision_transformer",
        40,
        0.01,
        20,
        ("91.20 +- 0.1", "92.26 +- 0.1", "91.87 +- 0.1"),
    ),
    "tinyimagenet_resnet50": (
        "tiny",
        "imagenet_resnet",
        256,
        0.1,
        200,
        ("61.38 +- 0.1", "64.68 +- 0.1", "62.50 +- 0.1"),
    ),
}
RECIPES = sorted([*PAPER, "digits"])

# Table A.2 per algorithm config: the strategy class, rho (``algorithm.rho``) and the other
# arguments. Where Table A.2 gives a range (GSAM's alpha 0.7-0.9, ESAM's gamma 0.6-1) the config
# takes one value of it; ASAM and LookSAM's alpha are not in the table (SamsungLabs/ASAM's and the
# usual LookSAM defaults).
FAMILY: dict[str, tuple[str | None, float | None, dict[str, object]]] = {
    "sgd": (None, None, {}),
    "sam": ("SAMStrategy", 0.1, {}),
    "asam": ("SAMStrategy", 0.5, {"adaptive": True, "eta": 0.01}),
    "gsam": ("GSAMStrategy", 0.1, {"alpha": 0.8}),
    "esam": ("ESAMStrategy", 0.1, {"beta": 0.6, "gamma": 0.6}),
    "looksam": ("LookSAMStrategy", 0.1, {"interval": 2, "alpha": 0.7}),
    "aesam": ("AESAMStrategy", 0.1, {"lambda1": -1.0, "lambda2": 1.0, "decay": 0.9}),
    "mesa": ("MESAStrategy", None, {"beta": 0.995, "lam": 0.8, "tau": 1.5, "start_epoch": 5}),
    "asyncsam": ("AsyncSAMStrategy", 0.1, {"ascent_batch_size": "auto"}),
}
ALGORITHM_DIR = files("lightning_asyncsam.conf") / "algorithm"
DATA_TARGETS = {
    "cifar10": "CIFARDataModule",
    "cifar100": "CIFARDataModule",
    "flowers102": "Flowers102DataModule",
    "speech": "SpeechCommandsDataModule",
    "tiny": "TinyImageNetDataModule",
}


def test_every_recipe_file_is_tested() -> None:
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) == RECIPES


def test_default_is_digits_with_asyncsam(tmp_path: Path) -> None:
    cfg = compose_train([], tmp_path)
    assert cfg.recipe_name == "digits" and cfg.algorithm.name == "asyncsam"
    assert cfg.data._target_.endswith("DigitsDataModule") and cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("recipe", sorted(PAPER))
def test_recipe_follows_tables_a1_a2(recipe: str, tmp_path: Path) -> None:
    data, model, b, lr, epochs, _ = PAPER[recipe]
    cfg = compose_train([f"recipe={recipe}"], tmp_path)
    assert cfg.recipe_name == recipe
    assert cfg.data._target_.endswith(DATA_TARGETS[data.split("_")[0]])
    if data.startswith("cifar"):
        assert cfg.data.variant == data
    assert cfg.model._target_.endswith(model)
    assert (cfg.data.batch_size, cfg.optimizer.lr, cfg.trainer.max_epochs) == (b, lr, epochs)
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.model.num_classes == cfg.data.num_classes
    assert cfg.trainer.devices == 1 and cfg.trainer.accelerator == "gpu"
    for algorithm in ("sam", "gsam", "esam", "looksam", "aesam", "asyncsam"):
        assert compose_train([f"recipe={recipe}", f"algorithm={algorithm}"], tmp_path).algorithm.rho == 0.1


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_header_gives_outcome_command_and_hardware(recipe: str) -> None:
    text = (RECIPE_DIR / f"{recipe}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    header = text.split("defaults:")[0]
    for label in ("Outcome", "Command:", "Hardware:"):
        assert label in header
    assert f"recipe={recipe}" in header or recipe == "digits"
    if recipe in PAPER:
        sgd, sam, asyncsam = PAPER[recipe][5]
        assert re.search(rf"SGD {re.escape(sgd)} %\s+SAM {re.escape(sam)} %\s+AsyncSAM {re.escape(asyncsam)} %", header)


def test_table_4_2_rows_are_quoted() -> None:
    cifar = (RECIPE_DIR / "cifar10_resnet20.yaml").read_text()
    flowers = (RECIPE_DIR / "flowers102_wrn16_8.yaml").read_text()
    assert "EPYC 7452 / A6000        5x   93 +- 3 s   92.45 +- 0.4 %" in cifar
    assert "i9-13900HX / RTX 4060    3x   18 +- 1 s   76.55 +- 0.3 %" in flowers


@pytest.mark.parametrize("order", ["recipe_first", "algorithm_first"])
def test_command_line_algorithm_beats_the_recipe(order: str, tmp_path: Path) -> None:
    overrides = ["recipe=cifar10_resnet20", "algorithm=sgd"]
    cfg = compose_train(overrides if order == "recipe_first" else overrides[::-1], tmp_path)
    assert cfg.algorithm.name == "sgd" and cfg.algorithm.strategy == "auto"
    assert cfg.recipe_name == "cifar10_resnet20" and cfg.data.variant == "cifar10"  # the recipe still applies


def test_command_line_values_beat_recipe_values(tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "recipe=cifar10_resnet20",
            "algorithm=asyncsam",
            "algorithm.rho=0.05",
            "optimizer.lr=0.2",
            "data=cifar100",
            "model=wrn16_8",
            "seed=3",
            "data.root=/somewhere",
        ],
        tmp_path,
    )
    assert cfg.algorithm.strategy.rho == 0.05 and cfg.optimizer.lr == 0.2 and cfg.seed == 3
    assert cfg.data.variant == "cifar100" and cfg.model.depth == 16 and cfg.model.num_classes == 100
    assert cfg.data.root == "/somewhere"
    assert cfg.data.batch_size == 128  # the recipe's value, applied to the group chosen on the command line


def test_data_root_defaults_to_asyncsam_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCSAM_DATA", "/datasets")
    assert compose_train(["recipe=cifar10_resnet20"], tmp_path).data.root == "/datasets"
    monkeypatch.delenv("ASYNCSAM_DATA")
    assert compose_train(["recipe=cifar10_resnet20"], tmp_path).data.root == "./data"


def test_algorithms_instantiate_the_strategies(tmp_path: Path) -> None:
    assert compose_train(["algorithm=sgd"], tmp_path).algorithm.strategy == "auto"
    sam = instantiate(compose_train(["algorithm=sam"], tmp_path).algorithm.strategy)
    assert isinstance(sam, lightning_asyncsam.SAMStrategy) and sam.rho == 0.1
    cfg = compose_train(
        [
            "algorithm=asyncsam",
            "algorithm.strategy.ascent_batch_size=16",
            "algorithm.strategy.ascent_threads=1",
            "algorithm.strategy.ascent_data=next",
            "algorithm.strategy.ascent_nice=3",
        ],
        tmp_path,
    )
    asyncsam = instantiate(cfg.algorithm.strategy)
    assert isinstance(asyncsam, lightning_asyncsam.AsyncSAMStrategy)
    assert (asyncsam.rho, asyncsam.ascent_batch_size, asyncsam.ascent_threads, asyncsam.ascent_data,
            asyncsam.ascent_nice) == (0.1, 16, 1, "next", 3)
    assert instantiate(compose_train([], tmp_path).algorithm.strategy).ascent_batch_size == "auto"


def test_every_algorithm_file_is_tested() -> None:
    shipped = sorted(p.name[: -len(".yaml")] for p in ALGORITHM_DIR.iterdir() if p.name.endswith(".yaml"))
    assert shipped == sorted(FAMILY)


@pytest.mark.parametrize("algorithm", sorted(FAMILY))
def test_algorithm_follows_table_a2(algorithm: str, tmp_path: Path) -> None:
    cls, rho, arguments = FAMILY[algorithm]
    cfg = compose_train([f"algorithm={algorithm}"], tmp_path)
    assert (cfg.algorithm.name, cfg.algorithm.rho) == (algorithm, rho)
    if cls is None:
        assert cfg.algorithm.strategy == "auto"
        return
    assert cfg.algorithm.strategy._target_ == f"lightning_asyncsam.{cls}"
    assert {k: cfg.algorithm.strategy[k] for k in arguments} == arguments
    strategy = instantiate(cfg.algorithm.strategy)
    assert type(strategy) is getattr(lightning_asyncsam, cls)
    if rho is not None:
        assert cfg.algorithm.strategy.rho == rho and strategy.rho == rho  # algorithm.rho reaches the strategy
    assert algorithm in StrategyRegistry  # the config's name is the strategy's registered name


@pytest.mark.parametrize("algorithm", sorted(FAMILY))
def test_algorithm_header_says_what_and_how(algorithm: str) -> None:
    text = (ALGORITHM_DIR / f"{algorithm}.yaml").read_text()
    header = text.split("\nname:")[0]
    assert header.startswith("# ") and all(line.startswith("#") for line in header.splitlines())
    if algorithm not in ("sgd", "sam", "asyncsam"):  # the family's files name their paper values and command
        assert "Table A.2" in header and f"algorithm={algorithm}" in header


@pytest.mark.parametrize("algorithm", sorted(FAMILY))
def test_algorithm_rho_override_reaches_the_strategy(algorithm: str, tmp_path: Path) -> None:
    cfg = compose_train([f"algorithm={algorithm}", "algorithm.rho=0.07"], tmp_path)
    if isinstance(cfg.algorithm.strategy, str) or "rho" not in cfg.algorithm.strategy:
        assert algorithm in ("sgd", "mesa")  # no radius to set
    else:
        assert cfg.algorithm.strategy.rho == 0.07


def _benchmarks_common() -> object:
    return load_benchmark("_common")


def test_benchmarks_build_their_strategies_from_these_configs() -> None:
    common = _benchmarks_common()
    assert common.algorithm_names() == sorted(FAMILY)
    assert common.algorithm_strategy("sgd") == "auto"
    sam = common.algorithm_strategy("sam", rho=0.2)  # rho goes through algorithm.rho, as on the command line
    assert type(sam) is lightning_asyncsam.SAMStrategy and sam.rho == 0.2
    asyncsam = common.algorithm_strategy("asyncsam", ascent_batch_size=16, ascent_threads=1)
    assert (asyncsam.rho, asyncsam.ascent_batch_size, asyncsam.ascent_threads) == (0.1, 16, 1)
    with pytest.raises(ValueError, match="'rhoo'"):
        common.algorithm_strategy("sam", rhoo=0.2)
    with pytest.raises(ValueError, match="algorithm='samm' is not one of"):
        common.algorithm_strategy("samm")
    with pytest.raises(ValueError, match="takes no arguments"):
        common.algorithm_strategy("sgd", rho=0.1)


def test_benchmarks_probe_the_second_core_and_leave_the_process_as_it_was(monkeypatch) -> None:
    """``CoreProbe``: the speed benchmarks' reading of whether the worker's core is spare (2 cores or more)."""
    import importlib

    import torch

    # Imported by name, as the scripts import it: its neighbour process is spawned and unpickles it so.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    common = importlib.import_module("_common")
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    with common.CoreProbe() as cores:
        reading = cores.probe(repeats=1)
    assert cores.probe() is None  # its neighbour process is gone (the process police checks it too)
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == (affinity, threads)
    if len(affinity) < 2:
        assert reading is None
        return
    assert reading is not None and reading["alone_ms"] > 0 and reading["beside_ms"] > 0
    assert reading["slowdown"] == pytest.approx(reading["beside_ms"] / reading["alone_ms"])
    env = {"cpu": "c", "cores": 2, "python": "3", "torch": "t", "lightning": "l", "lightning_asyncsam": "a",
           "git_sha": "s", "date": "d", "core_sharing": reading}
    assert f"{reading['slowdown']:.2f}x" in common.environment_markdown(env)
    assert "second core" not in common.environment_markdown({**env, "core_sharing": None})


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(FAMILY))
def test_every_algorithm_trains_the_digits_recipe(algorithm: str, tmp_path: Path) -> None:
    """What ``asyncsam-train -m algorithm=...`` runs on the digits recipe, two steps each."""
    from lightning_asyncsam.app.train import train

    extra = ["algorithm.strategy.start_epoch=0"] if algorithm == "mesa" else []  # reach MESA's KL term
    cfg = compose_train([f"algorithm={algorithm}", "++trainer.fast_dev_run=2", *CPU_TEST_OVERRIDES, *extra], tmp_path)
    summary = train(cfg)
    assert (summary["recipe"], summary["algorithm"]) == ("digits", algorithm)
    assert 0.0 <= summary["val_acc_final"] <= 1.0


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_datamodule_and_model_instantiate(recipe: str, tmp_path: Path) -> None:
    cfg = compose_train([f"recipe={recipe}", f"paths.data_dir={tmp_path}"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size and str(datamodule.root) == str(tmp_path)
    if recipe == "cifar100_vit_b16":
        # The default weights path is under data.root; missing, it is a clear error.
        with pytest.raises(InstantiationException, match="vit_b_16-c867db91.pth") as info:
            instantiate(cfg.model)
        assert isinstance(info.value.__cause__, FileNotFoundError)
    else:
        assert instantiate(cfg.model) is not None


def test_optional_loggers_compose(tmp_path: Path) -> None:
    cfg = compose_train(["logger=tensorboard"], tmp_path)
    assert set(cfg.logger) == {"csv", "tensorboard"}
    assert cfg.logger.tensorboard.save_dir == f"{tmp_path}/tensorboard"


def test_run_and_sweep_directories_name_the_run() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="lightning_asyncsam.conf", version_base="1.3"):
        cfg = compose("train", overrides=["recipe=digits", "algorithm=sam", "seed=2"], return_hydra_config=True)
    OmegaConf.resolve(cfg.hydra.run)  # ${now:...} resolves without a running app
    assert cfg.hydra.run.dir.startswith("outputs/digits/sam/seed2/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.slow
def test_built_wheel_ships_and_composes_every_recipe(tmp_path: Path) -> None:
    """Build the wheel, install it elsewhere, compose every recipe from a directory outside the repo."""
    repo = Path(__file__).resolve().parents[1]
    wheels, site, elsewhere = tmp_path / "w", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(wheels.glob("lightning_asyncsam-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    script = f"""
import lightning_asyncsam
from hydra import compose, initialize_config_module
assert lightning_asyncsam.__file__.startswith({str(site)!r}), lightning_asyncsam.__file__
with initialize_config_module(config_module="lightning_asyncsam.conf", version_base="1.3"):
    for recipe in {RECIPES!r}:
        for algorithm in {sorted(FAMILY)!r}:
            cfg = compose("train", overrides=[f"recipe={{recipe}}", f"algorithm={{algorithm}}", "paths.output_dir=."])
            assert cfg.recipe_name == recipe and cfg.algorithm.name == algorithm
print("composed", len({RECIPES!r}) * {len(FAMILY)})
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"composed {len(RECIPES) * len(FAMILY)}" in out.stdout
    shipped = {p.name for p in (site / "lightning_asyncsam" / "conf" / "recipe").iterdir()}
    assert {f"{r}.yaml" for r in RECIPES} | {"README.md"} <= shipped
