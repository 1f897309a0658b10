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
    """The weights after each step, on the host; whether the buffers were pinned and the stream posted the steps.

    ``slow_gpu``: after each optimizer step the GPU also sleeps for that many cycles, so that a step's
    copies run long after the trainer's thread has queued them and posted the step behind them.
    """

    def __init__(self, slow_gpu: int = 0) -> None:
        super().__init__()
        self.pinned, self.stream_posted, self.worker_cuda = [], [], None
        self.slow_gpu = slow_gpu
        self.syncs = 0

    def on_train_start(self, trainer, pl_module) -> None:
        if self.slow_gpu:
            trainer.optimizers[0].register_step_post_hook(lambda *_: torch.cuda._sleep(self.slow_gpu))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        worker = trainer.strategy.worker
        self.pinned.append(worker.weights._pinned and all(g._pinned for g in worker.grads))
        self.stream_posted.append(worker.stream_device is not None)
        self.worker_cuda = worker.cuda_initialized
        self.steps[-1] = [p.cpu() for p in self.steps[-1]]


def _fits_algorithm_1(ascent_data: str, check: PinCheck) -> None:
    """A float64 fit on the GPU with a CPU worker, step by step against the serial reference."""
    model = in_float64(TinyClassifier)
    net = in_float64(lambda: TinyClassifier().net)
    t = trainer(AsyncSAMStrategy(rho=0.3, ascent_batch_size=4, ascent_device="cpu", ascent_threads=2,
                                 ascent_data=ascent_data),
                accelerator="cuda", max_epochs=3, precision="64-true", callbacks=[check])
    t.fit(model, loader(make_data(), 8))
    want = reference_asyncsam(net, make_optimizer("sgd", net.parameters()), epochs_of(make_data(), 8, 3), 0.3, 4,
                              ascent_data)
    assert_trajectories_close(check.steps, want, atol=1e-8)  # GPU and CPU reduce in different orders
    assert all(check.stream_posted)  # the stream posted every step behind its copies


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_gpu_main_cpu_worker_matches_algorithm_1(ascent_data: str) -> None:
    check = PinCheck()
    _fits_algorithm_1(ascent_data, check)
    assert all(check.pinned) and check.worker_cuda is False


def test_a_stream_post_waits_for_the_work_before_it() -> None:
    import multiprocessing as mp

    from lightning_asyncsam.ascent.stream_post import stream_post

    semaphore = mp.get_context("spawn").Semaphore(0)
    post = stream_post(semaphore, torch.device("cuda"))
    assert post is not None
    torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time, queued before the post
    post()
    assert not semaphore.acquire(False)  # the GPU is still asleep: not posted yet
    torch.cuda.current_stream().synchronize()
    assert semaphore.acquire(False) and not semaphore.acquire(False)


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_gpu_late_copies_still_give_the_worker_w_t(ascent_data: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU runs each step's copies ~25 ms after the trainer queued them; the trainer's thread never waits.

    A post that came before the copies had run would hand the worker the previous step's weights, and
    the trajectory would leave Algorithm 1's.
    """
    synchronize = torch.cuda.Stream.synchronize
    counted = {"calls": 0}

    def counting(stream):
        counted["calls"] += 1
        return synchronize(stream)

    monkeypatch.setattr(torch.cuda.Stream, "synchronize", counting)
    _fits_algorithm_1(ascent_data, PinCheck(slow_gpu=50_000_000))
    assert counted["calls"] <= 2  # the start-up check, never once a step (the close synchronizes the device)


def test_gpu_bf16_mixed_trains() -> None:
    model = TinyClassifier()
    t = trainer(AsyncSAMStrategy(rho=0.1, ascent_batch_size="auto"), accelerator="cuda", max_epochs=2,
                precision="bf16-mixed")
    t.fit(model, loader(make_data(dtype=torch.float32), 8))
    assert all(torch.isfinite(p).all() for p in model.parameters())

