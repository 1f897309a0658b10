"""Live weights (issue 11): on a CPU the worker reads w_t from the trainer's own parameter buffers, and the
trainer writes them again only once the worker has said that it read them."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from torch.nn import functional as F

import lightning as L
from lightning_asyncsam import AsyncSAMStrategy
from lightning_asyncsam.ascent.buffers import FlatTensors
from lightning_asyncsam.ascent.flat_params import FlatParameters
from lightning_asyncsam.ascent.worker import AscentWorker, AscentWorkerError
from tiny import TinyClassifier, float32_batch, loader, make_data, trainer


def _live_worker(model: torch.nn.Module) -> tuple[AscentWorker, FlatParameters, list[torch.Tensor]]:
    params = list(model.parameters())
    flat = FlatParameters(params, twins=True)
    values = [p.detach().clone() for p in params]
    assert flat.share() and flat.intact()  # the parameters follow their buffers into shared memory
    assert all(f.is_shared() for f in flat.flats) and not any(t.is_shared() for t in flat.twins)
    assert all(torch.equal(p, v) for p, v in zip(params, values))
    worker = AscentWorker(model, params, "cpu", threads=1, capacity=8)
    worker.read_live(flat.flats)
    return worker, flat, params


def test_the_worker_reads_w_t_from_the_trainer_buffers_before_the_trainer_writes_them() -> None:
    model = TinyClassifier()
    worker, flat, params = _live_worker(model)
    published = [p.clone() for p in worker.published_flats()]
    write = worker.flat_publisher(flat.flats)
    try:
        worker.start()
        taken = worker.read_signal()
        assert worker.live and taken is not None
        for step in range(3):
            with torch.no_grad():
                for p in params:
                    p.add_(0.1)
            w_t = [p.detach().clone() for p in params]
            write()  # nothing of the trainable parameters: the worker reads them where they live
            worker.submit(step, float32_batch(), 4, batch_idx=step)
            worker.await_read(timeout=30)
            with torch.no_grad():  # the update, once the worker has read w_t: it must not see it
                for p in params:
                    p.mul_(-3.0)
            result = worker.collect(timeout=30)
            assert taken(False) is False  # one post per step, taken by await_read
            x, y = float32_batch(4)
            with torch.no_grad():
                for p, w in zip(params, w_t):
                    p.copy_(w)
            want = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            assert result.step == step
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(worker.grads[step % 2].views(), want))
        assert all(torch.equal(a, b) for a, b in zip(worker.published_flats(), published))  # never written
    finally:
        worker.close()
        flat.release()


def test_the_worker_reads_the_published_copy_once_the_parameters_leave_the_buffers() -> None:
    model = TinyClassifier()
    worker, flat, params = _live_worker(model)
    try:
        worker.start()
        worker.submit(0, float32_batch(), 4, batch_idx=0)
        worker.await_read(timeout=30)
        worker.collect(timeout=30)
        elsewhere = [p.detach() * 0.5 + 0.01 for p in params]  # what module.to() would leave the parameters
        worker.publish(elsewhere)
        assert not worker.live and worker.read_signal() is None
        with torch.no_grad():
            flat.flats[0].fill_(7.0)  # the old buffers: no longer read
        worker.submit(1, float32_batch(), 4, batch_idx=1)
        worker.collect(timeout=30)
        x, y = float32_batch(4)
        ref = TinyClassifier()
        with torch.no_grad():
            for p, w in zip(ref.parameters(), elsewhere):
                p.copy_(w)
        want = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(worker.grads[1].views(), want))
    finally:
        worker.close()
        flat.release()


def test_a_worker_killed_before_it_reads_fails_the_wait_within_seconds() -> None:
    worker, flat, _ = _live_worker(TinyClassifier())
    try:
        worker.start()
        worker.submit(0, float32_batch(), 4, batch_idx=0)
        worker.await_read(timeout=30)
        worker.collect(timeout=30)
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(AscentWorkerError, match="exit|pid"):
            worker.submit(1, float32_batch(), 4, batch_idx=1)
            worker.await_read(timeout=60)
        assert time.monotonic() - start < 15
    finally:
        worker.close()
        flat.release()


def test_live_buffers_must_be_shared_and_laid_out_as_the_gradients() -> None:
    model = TinyClassifier()
    params = list(model.parameters())
    private = FlatParameters(params, twins=True)
    worker = AscentWorker(model, params, "cpu", threads=1, capacity=8)
    try:
        with pytest.raises(ValueError, match="read_live"):
            worker.read_live(private.flats)
        with pytest.raises(ValueError, match="read_live"):
            worker.read_live([torch.zeros(3).share_memory_()])
        assert not worker.live
    finally:
        worker.close()
        private.release()


def _full(self: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("unable to allocate shared memory(shm) for file </torch_0>: No space left on device (28)")


def test_without_room_in_shared_memory_the_fit_publishes_w_t_instead(monkeypatch) -> None:
    """/dev/shm too small for the trainer's buffers (torch raises): the worker reads the published copy, and the fit runs."""
    share = FlatParameters.share

    def share_without_room(self: FlatParameters) -> bool:
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "share_memory_", _full)
            return share(self)

    monkeypatch.setattr(FlatParameters, "share", share_without_room)
    seen: list[bool] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            s = trainer.strategy
            seen.append(not s.worker.live and not s._flat.flats[0].is_shared() and s._flat.intact()
                        and s._read_signal is None)

    model = TinyClassifier()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2, callbacks=[Probe()])
    t.fit(model, loader(make_data(n=32, dtype=torch.float32), 8))
    assert len(seen) == 8 and all(seen)
    monkeypatch.setattr(FlatParameters, "share", share)  # the same fit with live weights: the same trajectory
    live = TinyClassifier()
    trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2).fit(
        live, loader(make_data(n=32, dtype=torch.float32), 8))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), live.parameters()))


def test_a_worker_without_room_for_its_buffers_says_where_to_make_room(monkeypatch) -> None:
    monkeypatch.setattr(torch.Tensor, "share_memory_", _full)
    model = TinyClassifier()
    with pytest.raises(RuntimeError, match="shm-size"):
        AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)


def test_a_live_writer_writes_the_rest_alone() -> None:
    flat = FlatTensors([torch.zeros(2), torch.zeros(3), torch.zeros(1)])
    source, rest = torch.arange(5.0), torch.tensor([9.0])
    flat.flat_writer([source], count=2, rest=[rest], live=True)()
    assert [v.tolist() for v in flat.views()] == [[0.0, 0.0], [0.0, 0.0, 0.0], [9.0]]
    assert flat.flat_writer([source], count=2, rest=[], live=True)() is None  # nothing to write at all


def test_a_cpu_fit_reads_live_weights_and_takes_the_read_before_every_update() -> None:
    """Every step, the perturbed and the unperturbed ones: the worker's read is taken before the optimizer writes."""
    seen: dict[str, list[bool]] = {"live": [], "taken": [], "untouched": []}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            worker = trainer.strategy.worker
            self.initial = [p.clone() for p in worker.published_flats()]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            s = trainer.strategy
            seen["live"].append(s.worker.live and all(f.is_shared() for f in s._flat.flats))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            s = trainer.strategy
            seen["taken"].append(s._reading is None and s._read_signal is not None)
            seen["untouched"].append(all(torch.equal(a, b) for a, b in zip(s.worker.published_flats(), self.initial)))

    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2, accumulate_grad_batches=2,
                callbacks=[Probe()])
    t.fit(TinyClassifier(), loader(make_data(n=64, dtype=torch.float32), 8))
    assert len(seen["taken"]) == 8
    assert all(seen["live"]) and all(seen["taken"]) and all(seen["untouched"]), seen


@pytest.mark.slow
def test_a_spawned_worker_reads_the_live_buffers_too(monkeypatch) -> None:
    """Under spawn the buffers cross as shared-memory handles (fork inherits the mapping): the same reads."""
    from lightning_asyncsam.ascent import launch

    monkeypatch.setattr(launch, "fork_is_safe", lambda: False)
    model = TinyClassifier()
    worker, flat, params = _live_worker(model)
    try:
        worker.start()
        assert worker.start_method == "spawn"
        with torch.no_grad():
            params[0].add_(0.5)  # after start(): the worker must see this, read where it lives
        w_t = [p.detach().clone() for p in params]
        worker.submit(0, float32_batch(), 4, batch_idx=0)
        worker.await_read(timeout=120)
        with torch.no_grad():
            for p in params:
                p.zero_()
        worker.collect(timeout=120)
        with torch.no_grad():
            for p, w in zip(params, w_t):
                p.copy_(w)
        x, y = float32_batch(4)
        want = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(worker.grads[0].views(), want))
    finally:
        worker.close()
        flat.release()
