"""``asyncsam-train``: the Hydra application that trains one recipe with SGD, SAM or AsyncSAM.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main()`` is the thin
``@hydra.main`` wrapper behind the ``asyncsam-train`` command and ``python -m
lightning_asyncsam.app.train``. Each run writes to its run directory (``paths.output_dir``):

* ``.hydra/`` (Hydra's composed config and overrides) and ``config_resolved.yaml``, the config
  with every interpolation resolved;
* ``metrics.csv`` (CSVLogger): ``train/loss``, ``train/lr``, ``val/loss``, ``val/acc``,
  ``time/elapsed_s`` and ``time/epoch_s``, plus whatever the strategy logs (``asyncsam/...``);
* ``checkpoints/``: ``last.ckpt`` and the best epoch by ``val/acc``;
* ``summary.json``: what ``asyncsam-report`` tabulates (see :func:`build_summary`).

Wall-clock time for Figure 4 is the ``time/elapsed_s`` column that :class:`RunClock` logs at
each validation: seconds since training started (after the sanity check, including the AsyncSAM
worker's start-up), carried across a resume through the checkpoint.

The config is resolved once, at the start of :func:`train`, into plain values. Nothing is left
to resolve later, in particular not ``${now:...}`` in another process (hydra#2070).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import lightning_asyncsam
from lightning_asyncsam.app.classifier import Classifier, count_parameters

log = logging.getLogger(__name__)

#: The metric the strategy logs for b' (absent with SGD and SAM).
ASCENT_BATCH_SIZE_KEY = "asyncsam/ascent_batch_size"


def _batch_size(batch: Any) -> int:
    """Number of samples in a batch of tensors, a tuple/list of them or a dict of them."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 0


class RunClock(pl.Callback):
    """Times the run: epoch wall-clock, training images/s, and elapsed seconds at each validation.

    Logs ``time/elapsed_s`` with every validation (so that ``metrics.csv`` pairs it with
    ``val/acc`` for Figure 4) and ``time/epoch_s`` and ``time/train_images_per_s`` at each epoch
    end. Training time excludes the validation that runs inside an epoch.

    Its state (elapsed time, epoch times, validation history) is saved in checkpoints, so a
    resumed run's clock continues where the interrupted one stopped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.elapsed_before = 0.0  # seconds of earlier, interrupted runs (from a checkpoint)
        self.epoch_times: list[float] = []  # wall-clock of each epoch, validation included
        self.train_times: list[float] = []  # the same without validation
        self.train_samples: list[int] = []
        self.val_history: list[tuple[float, float]] = []  # (elapsed seconds, val/acc)
        self._start: float | None = None
        self._epoch_start = 0.0
        self._val_start = 0.0
        self._val_in_epoch = 0.0
        self._samples = 0

    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs of a resumed training included."""
        return self.elapsed_before + (0.0 if self._start is None else time.perf_counter() - self._start)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._val_in_epoch = 0.0
        self._samples = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += _batch_size(batch)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._start is None:
            return
        self._val_in_epoch += time.perf_counter() - self._val_start
        pl_module.log("time/elapsed_s", self.elapsed(), on_step=False, on_epoch=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, unlike in on_validation_epoch_end, the epoch's val/acc has been computed.
        acc = trainer.callback_metrics.get("val/acc")
        if not trainer.sanity_checking and self._start is not None and acc is not None:
            self.val_history.append((self.elapsed(), float(acc)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = time.perf_counter() - self._epoch_start
        train = max(epoch - self._val_in_epoch, 1e-9)
        self.epoch_times.append(epoch)
        self.train_times.append(train)
        self.train_samples.append(self._samples)
        pl_module.log("time/epoch_s", epoch, on_step=False, on_epoch=True)
        pl_module.log("time/train_images_per_s", self._samples / train, on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python numbers only, so that checkpoints load with ``weights_only=True``."""
        return {
            "elapsed_s": self.elapsed(),
            "epoch_times": list(self.epoch_times),
            "train_times": list(self.train_times),
            "train_samples": list(self.train_samples),
            "val_history": [list(item) for item in self.val_history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict["elapsed_s"])
        self.epoch_times = [float(t) for t in state_dict["epoch_times"]]
        self.train_times = [float(t) for t in state_dict["train_times"]]
        self.train_samples = [int(n) for n in state_dict["train_samples"]]
        self.val_history = [(float(t), float(a)) for t, a in state_dict["val_history"]]


def git_sha(*directories: str | Path) -> str | None:
    """``git rev-parse HEAD`` of the first directory that is in a git repository with a commit.

    Args:
        *directories: Tried in order; by default the working directory, then this package's.

    Returns:
        The 40-hex commit, or ``None`` when none of them is in a git repository.
    """
    candidates = directories or (Path.cwd(), Path(__file__).resolve().parent)
    for directory in candidates:
        try:
            result = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        sha = result.stdout.strip()
        if len(sha) == 40:
            return sha
    return None


def package_version() -> str | None:
    """``lightning_asyncsam.__version__``, else the installed distribution's version, else None."""
    version = getattr(lightning_asyncsam, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("lightning-asyncsam")
    except importlib.metadata.PackageNotFoundError:
        return None


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """A device's model name: the GPU's for a CUDA device, the CPU's otherwise."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def _hardware(trainer: pl.Trainer) -> dict[str, Any]:
    """What the timings were measured on: Table 4.2's descent and ascent devices."""
    root = trainer.strategy.root_device
    ascent = getattr(trainer.strategy, "worker_device", None)  # where "auto" put the ascent
    return {
        "device": str(root),
        "descent_device": device_name(root),
        "ascent_device": None if ascent is None else device_name(ascent),
        # The replica's layout as asked ("auto", "channels_last", "preserve"; the worker resolves "auto").
        "ascent_memory_format": getattr(trainer.strategy, "ascent_memory_format", None),
        "gpu": torch.cuda.get_device_name(root) if root.type == "cuda" else None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def build_summary(cfg: DictConfig, trainer: pl.Trainer, clock: RunClock, fit_time_s: float) -> dict[str, Any]:
    """The facts of one finished run that ``asyncsam-report`` needs, as plain JSON values.

    Args:
        cfg: The resolved run config.
        trainer: The trainer after ``fit``.
        clock: The run's :class:`RunClock`.
        fit_time_s: Wall-clock seconds of ``trainer.fit`` in this process.

    Returns:
        ``val_acc_final`` / ``val_acc_best`` (fractions in [0, 1]), ``epoch_time_s`` (the
        steady-state wall-clock per epoch, validation included: the median of the epochs after
        the first, or the only epoch), ``first_epoch_time_s`` (the first epoch alone: it holds
        the start-up, AsyncSAM's worker included), ``train_images_per_s``, ``ascent_batch_size``
        (b', ``None`` without AsyncSAM), the algorithm, recipe, seed, package version, git SHA
        and more.
    """
    history = [acc for _, acc in clock.val_history]
    ascent = _metric(trainer, ASCENT_BATCH_SIZE_KEY)
    samples, train_time = sum(clock.train_samples), sum(clock.train_times)
    steady = clock.epoch_times[1:] or clock.epoch_times  # the first epoch holds the start-up
    return {
        "recipe": cfg.get("recipe_name"),
        "algorithm": cfg.algorithm.name,
        "rho": cfg.algorithm.get("rho"),
        "seed": cfg.seed,
        "val_acc_final": _metric(trainer, "val/acc"),
        "val_acc_best": max(history) if history else _metric(trainer, "val/acc"),
        # (elapsed seconds, val/acc) of every validation: Figure 4 even without metrics.csv.
        "val_history": [[round(t, 3), round(acc, 6)] for t, acc in clock.val_history],
        "epochs": len(clock.epoch_times),
        "epoch_time_s": statistics.median(steady) if steady else None,
        "epoch_time_std_s": statistics.stdev(steady) if len(steady) > 1 else None,
        "first_epoch_time_s": clock.epoch_times[0] if clock.epoch_times else None,
        "epoch_times_s": list(clock.epoch_times),
        "train_images_per_s": samples / train_time if train_time > 0 else None,
        "fit_time_s": fit_time_s,
        "batch_size": cfg.data.get("batch_size"),
        "ascent_batch_size": None if ascent is None else round(ascent),
        "parameters": count_parameters(trainer.lightning_module),
        "precision": str(trainer.precision),
        **_hardware(trainer),
        "version": package_version(),
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "output_dir": str(cfg.paths.output_dir),
    }


def _instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising our own argument and missing-file errors unwrapped.

    Hydra wraps every exception of a target in an ``InstantiationException``; the ``ValueError``
    or ``FileNotFoundError`` inside already says what is wrong and how to fix it.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise


def _strategy(algorithm: DictConfig) -> Any:
    """Return the Trainer's ``strategy``: a name such as ``"auto"`` (SGD), or a strategy object."""
    strategy = algorithm.strategy
    return strategy if isinstance(strategy, str) else _instantiate(strategy)


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group such as ``callbacks`` or ``logger`` (null entries skipped)."""
    if not node:
        return []
    return [_instantiate(entry) for entry in node.values() if entry is not None and "_target_" in entry]



def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file (rename is atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured recipe and return its summary (also written to ``summary.json``).

    Args:
        cfg: A composed ``train`` config (``asyncsam-train``'s, or one built with Hydra's
            ``compose`` with ``paths.output_dir`` set).

    Returns:
        The run summary of :func:`build_summary`.
    """
    # Resolve once into plain values; every later reader (and any child process) sees the same.
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg))

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = _instantiate(cfg.data)
    module = Classifier(
        net=_instantiate(cfg.model),
        num_classes=cfg.data.num_classes,
        optimizer=_instantiate(cfg.optimizer),
        scheduler=_instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    clock = RunClock()
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = _instantiate(
        cfg.trainer,
        strategy=_strategy(cfg.algorithm),
        callbacks=[*_instantiate_all(cfg.get("callbacks")), clock],
        logger=loggers or False,
    )
    log.info("recipe=%s algorithm=%s seed=%s -> %s", cfg.recipe_name, cfg.algorithm.name, cfg.seed, output_dir)
    with warnings.catch_warnings():
        # The run directory always holds .hydra/ and config_resolved.yaml before the CSV log
        # starts; Lightning's warning about a non-empty directory would fire on every run.
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg))
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    summary = build_summary(cfg, trainer, clock, time.perf_counter() - start)

    _write_atomically(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("best val/acc %s, %s s per epoch", summary["val_acc_best"], summary["epoch_time_s"])
    return summary


@hydra.main(version_base="1.3", config_path="pkg://lightning_asyncsam.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point of ``asyncsam-train``; returns the best validation accuracy (for sweepers)."""
    return train(cfg)["val_acc_best"]


if __name__ == "__main__":
    main()
