"""A module compiled with ``torch.compile`` trains under every strategy, its ascent replica compiled too (issue 12)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_asyncsam import AsyncSAMStrategy, SAMStrategy
from lightning_asyncsam.ascent.replica import uncompiled
from tiny import Recorder, TinyClassifier, assert_trajectories_close, in_float64, loader, make_data, trainer

EPOCHS = 2
HERE = Path(__file__).resolve().parent


class Marked(TinyClassifier):
    """Leaves a file when its training step runs in the replica (another process) wrapped by dynamo."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.main_pid = os.getpid()

    def training_step(self, batch, batch_idx):
        # In the replica only compile_replica wraps the instance's training_step (dynamo_ctx).
        if os.getpid() != self.main_pid and "training_step" in self.__dict__:
            Path(self.marker).write_text("compiled in the replica")
        return super().training_step(batch, batch_idx)


def _fit(make_strategy, compile_kwargs: dict | None, marker: Path) -> list:
    model = in_float64(lambda: Marked(str(marker)))
    fitted = torch.compile(model, **compile_kwargs) if compile_kwargs is not None else model
    rec = Recorder()
    t = trainer(make_strategy(), max_epochs=EPOCHS, precision="64-true", callbacks=[rec])
    t.fit(fitted, loader(make_data(), 8))
    return rec.steps


STRATEGIES = {
    "asyncsam": lambda: AsyncSAMStrategy(rho=0.3, ascent_batch_size=4, ascent_threads=1),
    "sam": lambda: SAMStrategy(rho=0.3),
}


def check(names: list[str], compile_kwargs: dict, atol: float, tmp: str) -> None:
    """Each strategy's compiled fit follows its uncompiled one; under AsyncSAM the replica ran compiled."""
    for name in names:
        # Uncompiled first: after a compiled backward, workers can no longer be forked (below).
        want = _fit(STRATEGIES[name], None, Path(tmp) / f"{name}_plain")
        got = _fit(STRATEGIES[name], compile_kwargs, Path(tmp) / f"{name}_compiled")
        assert_trajectories_close(got, want, atol=atol)
        if name == "asyncsam":
            assert (Path(tmp) / f"{name}_compiled").exists()  # the replica ran its training step through dynamo
            assert not (Path(tmp) / f"{name}_plain").exists()


def _isolated(names: list[str], compile_kwargs: dict, atol: float, tmp_path: Path) -> None:
    """Run :func:`check` in a fresh interpreter.

    The backward of a compiled module starts autograd's per-device threads in the process for
    good, after which every later worker of the test process must be spawned, not forked (see
    :mod:`lightning_asyncsam.ascent.launch`): the rest of the suite would pay seconds per fit.
    """
    code = f"import test_compile as t; t.check({names!r}, {compile_kwargs!r}, {atol!r}, {str(tmp_path)!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def test_a_compiled_module_follows_the_uncompiled_trajectory(tmp_path: Path) -> None:
    _isolated(list(STRATEGIES), {"backend": "eager"}, 1e-12, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="the default backend (inductor) needs a C++ compiler")
def test_the_default_backend_trains_a_compiled_module(tmp_path: Path) -> None:
    _isolated(["asyncsam"], {}, 1e-9, tmp_path)  # inductor may reorder float64 reductions


def test_serializing_leaves_the_compiled_module_as_it_was() -> None:
    compiled = torch.compile(TinyClassifier(), backend="eager")
    from lightning.pytorch.utilities.compile import from_compiled

    module = from_compiled(compiled)
    wrapped = module.__dict__["training_step"]
    with uncompiled(module):
        assert "training_step" not in module.__dict__ and module._compiler_ctx is None
    assert module.__dict__["training_step"] is wrapped and module._compiler_ctx["dynamo_ctx"] is compiled.dynamo_ctx
