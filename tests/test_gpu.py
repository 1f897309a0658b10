"""The CUDA path: a GPU main process with a CPU worker, pinned shared buffers. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from lightning_asyncsam import AsyncSAMStrategy
from tiny import (
    Recorder,
    TinyClassifier,
    assert_trajectories_close,
    epochs_of,
    in_float64,
    loader,
    make_data,
    make_optimizer,
    reference_asyncsam,
    trainer,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


class PinCheck(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.pinned, self.worker_cuda = [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        worker = trainer.strategy.worker
        self.pinned.append(worker.weights._pinned and all(g._pinned for g in worker.grads))
        self.worker_cuda = worker.cuda_initialized
        self.steps[-1] = [p.cpu() for p in self.steps[-1]]


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_gpu_main_cpu_worker_matches_algorithm_1(ascent_data: str) -> None:
    model = in_float64(TinyClassifier)
    net = in_float64(lambda: TinyClassifier().net)
    check = PinCheck()
    t = trainer(AsyncSAMStrategy(rho=0.3, ascent_batch_size=4, ascent_device="cpu", ascent_threads=2,
                                 ascent_data=ascent_data),
                accelerator="cuda", max_epochs=3, precision="64-true", callbacks=[check])
    t.fit(model, loader(make_data(), 8))
    want = reference_asyncsam(net, make_optimizer("sgd", net.parameters()), epochs_of(make_data(), 8, 3), 0.3, 4,
                              ascent_data)
    assert_trajectories_close(check.steps, want, atol=1e-8)  # GPU and CPU reduce in different orders
    assert all(check.pinned) and check.worker_cuda is False


def test_gpu_bf16_mixed_trains() -> None:
    model = TinyClassifier()
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size="auto"), accelerator="cuda", max_epochs=2,
                precision="bf16-mixed")
    t.fit(model, loader(make_data(dtype=torch.float32), 8))
    assert all(torch.isfinite(p).all() for p in model.parameters())

