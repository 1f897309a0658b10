"""The worker contract: failures on either side surface fast and clearly, and nothing outlives fit()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import lightning as L
import pytest
import torch

import lightning_asyncsam  # noqa: F401  (registers the strategy names)
from lightning_asyncsam import AscentWorkerError, AsyncSAMStrategy, SAMStrategy
from tiny import TinyClassifier, loader, make_data, trainer

B = 8


def _fit(model, strategy=None, **kw):
    strategy = strategy or AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1)
    t = trainer(strategy, max_epochs=2, **kw)
    t.fit(model, loader(make_data(dtype=torch.float32), B))
    return t


class KillWorkerAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step, self.killed_at = step, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.killed_at is None:
            os.kill(trainer.strategy.worker.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()


def test_killed_worker_raises_a_clear_error_within_seconds() -> None:
    killer = KillWorkerAt(3)
    with pytest.raises(AscentWorkerError, match=r"ascent worker \(pid \d+\) died with exit code -9"):
        _fit(TinyClassifier(), callbacks=[killer])
    assert time.monotonic() - killer.killed_at < 10.0


class FailsInTrainingStep(TinyClassifier):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("boom in training_step")
        return super().training_step(batch, batch_idx)


def test_exception_in_training_step_shuts_the_worker_down() -> None:
    with pytest.raises(RuntimeError, match="boom in training_step"):
        _fit(FailsInTrainingStep())
    # the autouse process police checks that no worker is left


class FailsInWorker(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.main_pid = os.getpid()

    def ascent_loss(self, batch):
        if os.getpid() != self.main_pid:
            raise ValueError("boom in the ascent worker")
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)


def test_exception_in_worker_reaches_the_trainer_with_its_traceback() -> None:
    with pytest.raises(AscentWorkerError, match="(?s)failed:.*boom in the ascent worker"):
        _fit(FailsInWorker())


class InterruptedAt(TinyClassifier):
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def test_keyboard_interrupt_shuts_everything_down() -> None:
    # Lightning turns Ctrl+C into a graceful shutdown followed by sys.exit(1).
    with pytest.raises(SystemExit):
        _fit(InterruptedAt())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after one


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": 0.0}, r"rho=0\.0 is not allowed"),
        ({"rho": -1}, r"rho=-1 is not allowed"),
        ({"rho": float("nan")}, r"rho=nan is not allowed"),
        ({"ascent_batch_size": 0}, r"ascent_batch_size=0 is not allowed.*1 <= b' <= b"),
        ({"ascent_batch_size": 1.5}, r"ascent_batch_size=1\.5 is not allowed"),
        ({"ascent_batch_size": "half"}, r"ascent_batch_size='half' is not allowed"),
        ({"ascent_device": "tpu"}, r"ascent_device='tpu' is not allowed: use 'auto', 'cpu'"),
        ({"ascent_device": "cuda:0"} if not torch.cuda.is_available() else {"ascent_device": "cuda:99"},
         r"ascent_device='cuda:\d+' is not allowed"),
        ({"ascent_data": "future"}, r"ascent_data='future' is not allowed: use 'previous'"),
        ({"ascent_threads": 0}, r"ascent_threads=0 is not allowed"),
        ({"ascent_nice": 20}, r"ascent_nice=20 is not allowed: use an int from 0 to 19"),
        ({"ascent_nice": -5}, r"ascent_nice=-5 is not allowed"),
        ({"ascent_cpus": []}, r"ascent_cpus=\[\] is not allowed: use 'auto', None, or a non-empty list"),
        ({"ascent_cpus": "all"}, r"ascent_cpus='all' is not allowed"),
        ({"ascent_cpus": [4096]}, r"ascent_cpus=\[4096\] is not allowed: use core ids among \["),
        ({"ascent_memory_format": "nhwc"}, r"ascent_memory_format='nhwc' is not allowed: use 'auto', 'channels_last'"),
        ({"adaptive": "yes"}, r"adaptive='yes' is not allowed: use True"),
        ({"eta": -0.1}, r"eta=-0\.1 is not allowed"),
        ({"eta": float("inf")}, r"eta=inf is not allowed"),
    ],
)
def test_bad_arguments_name_the_argument_the_value_and_what_is_allowed(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        strategy = AsyncSAMStrategy(**kwargs)
        _fit(TinyClassifier(), strategy)  # cuda:99 is only known to be bad once the worker starts


def test_sam_rejects_bad_rho() -> None:
    with pytest.raises(ValueError, match=r"rho=0 is not allowed"):
        SAMStrategy(rho=0)


def test_ascent_batch_larger_than_the_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"ascent_batch_size=9 is not allowed: it must be <= the batch size b=8"):
        _fit(TinyClassifier(), AsyncSAMStrategy(ascent_batch_size=9, ascent_threads=1))


class Frozen(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net.requires_grad_(False)
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD([self.dummy], lr=0.1)


@pytest.mark.parametrize("make_strategy", [lambda: AsyncSAMStrategy(ascent_threads=1), lambda: SAMStrategy()],
                         ids=["asyncsam", "sam"])
def test_module_without_trainable_parameters_is_rejected(make_strategy) -> None:
    with pytest.raises(ValueError, match="has no trainable parameters"):
        _fit(Frozen(), make_strategy())


NOTEBOOK_CELL = textwrap.dedent(
    """
    import sys
    sys.ps1 = ">>> "  # what Lightning takes for an interactive session (a notebook, a REPL)
    import lightning as L, torch
    import lightning_asyncsam
    from torch.utils.data import DataLoader, TensorDataset

    class NotebookModel(L.LightningModule):  # defined in __main__, with no file behind it
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 2)
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    trainer = L.Trainer(strategy="asyncsam", accelerator="cpu", devices=1, max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(NotebookModel(), DataLoader(ds, batch_size=8))
    print("NOTEBOOK-OK", trainer.global_step, trainer.callback_metrics["asyncsam/ascent_batch_size"].item())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["interactive", "script-without-main-guard"])
def test_notebook_style_run(how: str, tmp_path) -> None:
    """A class defined in __main__ reaches the spawned worker (cloudpickle, by value), and the
    worker does not re-run the user's script."""
    if how == "interactive":
        out = subprocess.run([sys.executable, "-"], input=NOTEBOOK_CELL, capture_output=True, text=True, timeout=240)
    else:
        script = tmp_path / "train.py"
        script.write_text(NOTEBOOK_CELL.replace('sys.ps1 = ">>> "', "pass"))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.stdout.count("NOTEBOOK-OK 4") == 1, out.stdout + out.stderr
