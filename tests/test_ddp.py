"""DDP with two processes on the CPU (gloo): each rank has its own worker and its own perturbation."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import lightning_asyncsam  # noqa: F401
from lightning_asyncsam import AsyncSAMStrategy, SAMStrategy
from tiny import TinyClassifier, loader, make_data, trainer


class RankCheck(L.Callback):
    """Runs inside each rank: the replicas stay identical while their perturbations differ."""

    def __init__(self) -> None:
        self.directions_differ = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        strategy = trainer.strategy
        assert not strategy._single_process and torch.distributed.is_initialized()
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = strategy.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), "DDP replicas diverged"
        if isinstance(strategy, AsyncSAMStrategy) and strategy.direction is not None:
            assert strategy.worker is not None and strategy.threads == 1
            d = torch.cat([g.flatten() for g in strategy.direction])
            both = strategy.all_gather(d)
            self.directions_differ = bool((both[0] - both[1]).abs().max() > 0)

    def on_train_end(self, trainer, pl_module) -> None:
        if isinstance(trainer.strategy, AsyncSAMStrategy):
            # each rank's worker saw its own shard: per-replica perturbation, as in the SAM paper
            assert self.directions_differ


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_strategy",
    [lambda: AsyncSAMStrategy(rho=0.1, ascent_batch_size=4, start_method="spawn"),
     lambda: SAMStrategy(rho=0.1, start_method="spawn")],
    ids=["asyncsam", "sam"],
)
def test_ddp_two_processes_on_cpu(make_strategy) -> None:
    model = TinyClassifier()
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(make_strategy(), devices=2, max_epochs=2, callbacks=[RankCheck()])
    t.fit(model, loader(make_data(dtype=torch.float32), 8))
    # ddp_spawn hands rank 0's weights back to this process
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(model.parameters(), before))
    assert "train_loss" in t.callback_metrics  # results came back from the ranks
    # every rank exited cleanly, after its run too (issue 10: a rank aborted at exit)
    assert [p.exitcode for p in t.strategy.launcher.procs] == [0, 0]


def test_registered_names_resolve_to_the_strategies() -> None:
    for name, cls, method in [("asyncsam", AsyncSAMStrategy, "popen"), ("asyncsam_spawn", AsyncSAMStrategy, "spawn"),
                              ("asyncsam_notebook", AsyncSAMStrategy, "fork"), ("sam", SAMStrategy, "popen"),
                              ("sam_fork", SAMStrategy, "fork")]:
        t = trainer(name)
        assert type(t.strategy) is cls and t.strategy._start_method == method
    assert trainer("asyncsam").strategy.launcher is None  # one process: no launcher, works in notebooks
