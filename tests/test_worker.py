"""The ascent worker process on its own, without Lightning."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch.nn import functional as F

from lightning_asyncsam.ascent.worker import AscentWorker, AscentWorkerError
from tiny import TinyClassifier, float32_batch


def test_worker_returns_the_gradient_at_the_published_weights() -> None:
    model = TinyClassifier()
    params = list(model.parameters())
    worker = AscentWorker(model, params, "cpu", threads=1, capacity=8)
    try:
        worker.start()
        for step in range(3):
            with torch.no_grad():
                for p in params:
                    p.add_(0.1)  # the main process moves on; the worker must see w_t, not its copy
            worker.publish()
            worker.submit(step, float32_batch(), 4, batch_idx=step)
            result = worker.collect(timeout=30)
            x, y = float32_batch(4)
            want = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            got = worker.grads[step % 2].views()
            assert result.step == step and result.samples == 4 and result.ascent_ms > 0
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
            assert abs(result.grad_norm - torch.cat([g.flatten() for g in want]).norm().item()) < 1e-5
        assert worker.cuda_initialized is False  # a CPU worker never creates a CUDA context
    finally:
        worker.close()
    worker.close()  # idempotent


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX scheduling priorities")
def test_worker_yields_the_cpu_to_the_main_process() -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8, nice=7)
    try:
        worker.start()
        worker.publish()
        worker.submit(0, float32_batch(), 4, 0)  # waits until the worker has booted
        worker.collect(timeout=30)
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(mine + 7, 19)
        assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the trainer's own priority is untouched
    finally:
        worker.close()


def test_worker_errors_are_clear() -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    with pytest.raises(AscentWorkerError, match="not running"):
        worker.submit(0, float32_batch(), 4, 0)
    worker.start()
    try:
        with pytest.raises(AscentWorkerError, match="no ascent step in flight"):
            worker.collect()
        worker.publish()
        worker.submit(0, float32_batch(), 4, 0)
        with pytest.raises(AscentWorkerError, match="while step 0 is in flight"):
            worker.submit(1, float32_batch(), 4, 1)
        worker.collect(timeout=30)
        os.kill(worker.pid, signal.SIGKILL)
        worker.publish()
        with pytest.raises(AscentWorkerError, match=r"died with exit code -9"):
            worker.submit(1, float32_batch(), 4, 1)
            worker.collect(timeout=30)
    finally:
        worker.close()


def test_parameters_outside_the_module_are_rejected() -> None:
    model = TinyClassifier()
    with pytest.raises(ValueError, match="not parameters of the LightningModule"):
        AscentWorker(model, [torch.nn.Parameter(torch.zeros(1))], "cpu", 1, 8)


def test_shared_object_crosses_processes_and_refuses_what_does_not_fit() -> None:
    """A batch's changing non-tensor leaves cross through shared bytes (SharedObject); too large: the pipe."""
    import multiprocessing as mp

    from lightning_asyncsam.ascent.shared_object import SharedObject

    box = SharedObject(capacity=1024)
    ctx = mp.get_context("fork")  # spawned workers carry it in the slow tests (test_launchers.py, test_reliability.py)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_read_shared_object, args=(box, child), daemon=True)
    proc.start()
    try:
        for names in (["a.png", "b.png"], ("c.png",), {"id": 7}):
            assert box.put(names)
            parent.send("go")
            assert parent.poll(10), "the reader did not answer"
            assert parent.recv() == names
        assert not box.put("x" * 2000)
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def _read_shared_object(box, conn) -> None:
    while conn.recv() == "go":
        conn.send(box.get() if box.changed() else "unchanged")
