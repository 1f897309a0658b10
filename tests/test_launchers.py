"""Every multi-process launcher trains a module defined in a script, in a notebook, or in an importable file.

Each case runs a small program in a fresh interpreter (two CPU ranks, one epoch), as a user would.
In a rank started by the ``spawn`` launcher the user's script is ``__mp_main__``: its classes must
travel to the worker by value (issue 10, item 2). ``ascent_threads=2`` makes the worker itself
spawned, the case where a class pickled by reference cannot be found; with one thread it is forked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MODULE = '''
import lightning as L
import torch
from torch.nn import functional as F


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(5, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert self.trainer.world_size == 2 and self.trainer.max_epochs == 1  # also in the replica
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
'''

FIT = '''
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_asyncsam
from lightning_asyncsam import AsyncSAMStrategy


def fit(model, launcher, threads):
    start_method = {"asyncsam": "popen", "asyncsam_spawn": "spawn", "asyncsam_notebook": "fork"}[launcher]
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)),
                      batch_size=8)
    strategy = AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=threads, start_method=start_method)
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, data)
    print("FIT_OK", flush=True)
'''


def _program(where: str, launcher: str, threads: int, tmp_path: Path) -> list[str]:
    (tmp_path / "fitting.py").write_text(FIT)
    call = f"fit(Tiny(), {launcher!r}, {threads})"
    if where == "notebook":  # cells run in __main__, with no file behind it
        return [sys.executable, "-c", MODULE + "\nfrom fitting import fit\n" + call]
    if where == "module":
        (tmp_path / "usermodel.py").write_text(MODULE)
        head = "from usermodel import Tiny\n"
    else:
        head = MODULE
    script = tmp_path / "train.py"
    script.write_text(head + "\nfrom fitting import fit\n\nif __name__ == '__main__':\n    " + call + "\n")
    return [sys.executable, str(script)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "launcher", "threads"),
    [  # each place x each launcher; every spawn-launcher case with a spawned worker, the case that failed
        ("script", "asyncsam", 1),
        ("script", "asyncsam_spawn", 2),
        ("script", "asyncsam_notebook", 1),
        ("module", "asyncsam", 1),
        ("module", "asyncsam_spawn", 2),
        ("module", "asyncsam_notebook", 1),
        ("notebook", "asyncsam_notebook", 2),
        ("notebook", "asyncsam_notebook", 1),
    ],
)
def test_launcher_trains_a_module_defined_anywhere(where: str, launcher: str, threads: int, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    done = subprocess.run(_program(where, launcher, threads, tmp_path), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "FIT_OK" in done.stdout, textwrap.shorten(out[-3000:], 3000)
