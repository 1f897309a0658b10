"""The per-step budget of worker.py's contract (issue 11): the trainer's steady step runs a fixed amount
of this package's Python whatever the model's size or the batch's number of tensors.

Counted, not timed: every bytecode instruction that a frame of ``lightning_asyncsam`` executes on the
trainer's thread, from the end of one training batch to the end of the next (the lookahead's fetch,
``batch_to_device``, the synchronization, perturb, restore and the optimizer step's wrappers). A walk
over the parameters or the batch's tensors in Python, anywhere on that path, makes the count grow
with them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_asyncsam import AsyncSAMStrategy
from tiny import trainer

BATCH, STEPS = 8, 12  # steps an epoch


class OpcodeCounter(L.Callback):
    """Per training step after the epoch's first: the bytecode instructions run in this package's frames.

    The window of step i runs from the end of step i - 1 to the end of step i. An epoch's last step
    (no next batch to lend, the logging that ends an epoch) and steps on which the trainer waited
    for the worker (the wait is a poll loop) are not steady: the minimum over the other steps is the
    steady path.
    """

    def __init__(self) -> None:
        self.counts: list[int] = []
        self._count = 0
        self._outer = sys.gettrace()  # a coverage tool's or debugger's tracer: paused in a window, then restored

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        if event == "call":
            name = frame.f_code.co_filename.replace("\\", "/")
            if "lightning_asyncsam/" in name and "lightning_asyncsam/app/" not in name:
                frame.f_trace_opcodes = True
                return self._trace
            return None
        if event == "opcode":
            self._count += 1
        return self._trace

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        sys.settrace(self._outer)
        if 1 <= batch_idx < STEPS - 1 and trainer.current_epoch >= 1:
            self.counts.append(self._count)
        self._count = 0
        if batch_idx < STEPS - 2:  # the next step is steady: count its window
            sys.settrace(self._trace)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sys.settrace(self._outer)


class Classifier(L.LightningModule):
    """A plain classifier over the batch's first two tensors; the others ride along (ids, masks, extras)."""

    def __init__(self, hidden_layers: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Linear(4, 8), nn.Tanh()]
        for _ in range(hidden_layers):
            layers += [nn.Linear(8, 8), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(8, 3))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def steady_opcodes(hidden_layers: int, extra_tensors: int) -> int:
    g = torch.Generator().manual_seed(1)
    n = BATCH * STEPS
    tensors = [torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)]
    tensors += [torch.randn(n, 2, generator=g) for _ in range(extra_tensors)]
    counter = OpcodeCounter()
    # log_every_n_steps beyond the epoch: no step logs but an epoch's last, which is not counted.
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=3, log_every_n_steps=1000,
                callbacks=[counter])
    t.fit(Classifier(hidden_layers), DataLoader(TensorDataset(*tensors), batch_size=BATCH))
    assert len(counter.counts) == 2 * (STEPS - 2)
    return min(counter.counts)


@pytest.mark.slow
def test_the_steady_step_runs_the_same_python_whatever_the_model_and_batch_size() -> None:
    small = steady_opcodes(hidden_layers=0, extra_tensors=0)  # 4 parameter tensors, 2 batch tensors
    deep = steady_opcodes(hidden_layers=12, extra_tensors=0)  # 28 parameter tensors
    wide = steady_opcodes(hidden_layers=0, extra_tensors=6)   # 8 batch tensors
    assert small > 0
    assert deep == small, f"{deep} bytecodes a step with 28 parameter tensors, {small} with 4"
    assert wide == small, f"{wide} bytecodes a step with 8 batch tensors, {small} with 2"
