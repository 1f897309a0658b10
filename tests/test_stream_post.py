"""A GPU trainer's step posted by its CUDA stream (stream_post): the parts that run without a GPU.

What the CUDA stream's callback thread will call (``sem_post`` through a ``cudaHostFn_t`` on the
semaphore's address), the worker acting on that post alone, the fall-back where the stream cannot
post, the tuner's window starting when the step reached the worker, and a close that never frees
what a failed stream still holds. The stream itself is tested in tests/test_gpu.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from lightning_asyncsam import AsyncSAMStrategy

from lightning_asyncsam.ascent import stream_post, worker as worker_module
from lightning_asyncsam.ascent.callback import AsyncSAMCallback
from lightning_asyncsam.ascent.autotune import AscentBatchTuner
from lightning_asyncsam.ascent.mailbox import Mailbox
from lightning_asyncsam.ascent.worker import AscentWorker
from tiny import (
    TinyClassifier,
    assert_trajectories_close,
    epochs_of,
    fit_float64,
    float32_batch,
    in_float64,
    make_data,
    make_optimizer,
    reference_asyncsam,
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_host_function_posts_the_semaphore_once(method: str) -> None:
    semaphore = mp.get_context(method).Semaphore(0)
    assert stream_post.semaphore_address(semaphore) is not None
    stream_post.call_as_host_function(semaphore)
    assert semaphore.acquire(False) and not semaphore.acquire(False)


def test_only_multiprocessing_semaphores_have_an_address() -> None:
    import threading

    assert stream_post.semaphore_address(threading.Semaphore(0)) is None
    assert stream_post.semaphore_address(object()) is None


def _loaded(name: str) -> bool:
    with open("/proc/self/maps") as maps:
        return any(name in line for line in maps)


def test_the_runtime_is_the_one_already_loaded_never_a_new_one() -> None:
    before = _loaded("libcudart")
    lib = stream_post._loaded_cudart()
    assert _loaded("libcudart") == before and (lib is not None) == before
    if lib is not None:
        assert hasattr(lib, "cudaLaunchHostFunc")


@pytest.mark.skipif(torch.cuda.is_available() or stream_post._host_function_launcher() is None,
                    reason="a CUDA runtime without a usable GPU")
def test_without_a_gpu_the_launch_fails_cleanly_and_posts_nothing() -> None:
    """The launcher's signature marshals the three pointers: CUDA answers with an error code, not a crash."""
    semaphore = mp.get_context("spawn").Semaphore(0)
    launch = stream_post._host_function_launcher()
    assert launch(0, stream_post._SEM_POST, stream_post.semaphore_address(semaphore)) != 0
    assert not semaphore.acquire(False)


def test_no_stream_post_without_a_cuda_stream() -> None:
    box = Mailbox(mp.get_context("fork"))
    assert stream_post.stream_post(box.work, torch.device("cpu")) is None
    assert not box.post_on_stream(torch.device("cpu"))
    assert box.signal_step == box.work.release  # the step is posted directly, as on a CPU trainer
    if not torch.cuda.is_available():
        assert stream_post.stream_post(box.work, torch.device("cuda:0")) is None


def test_the_worker_starts_a_step_only_when_its_post_arrives() -> None:
    """The numbers written by submit() travel; the step starts at the post, whoever makes it (here, later)."""
    model = TinyClassifier()
    params = list(model.parameters())
    worker = AscentWorker(model, params, "cpu", threads=1, capacity=8)
    try:
        worker.start()
        worker.wait_ready(timeout=60)
        mailbox = worker._mailbox
        held: list[object] = []
        mailbox.signal_step = lambda: held.append(mailbox.work.release)  # a stream that has not reached the post
        worker.publish()
        worker.submit(0, float32_batch(), 4, batch_idx=0)
        time.sleep(0.3)
        assert worker.take() is None and len(held) == 1  # submitted, not started
        before = time.perf_counter()
        held.pop()()  # the stream reaches it
        result = worker.collect(timeout=30)
        x, y = float32_batch(4)
        want = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        assert result.step == 0 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(worker.grads[0].views(), want))
        assert before <= worker.woke() <= time.perf_counter()  # the worker's clock is the trainer's
    finally:
        worker.close()


class LatePosts(L.Callback):
    """Each step's post arrives 1-6 ms after the submission, from another thread, as a CUDA stream's would."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mailbox = trainer.strategy.worker._mailbox
        delays = iter([0.001 * (1 + i % 6) for i in range(10_000)])
        mailbox.signal_step = lambda: threading.Timer(next(delays), mailbox.work.release).start()


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_algorithm_1_holds_when_each_post_comes_late(ascent_data: str) -> None:
    """Nothing on the trainer's side assumes that the worker starts at the submission (lent batches included).

    The trainer's thread goes on after a stream-posted submission; the worker starts whenever the post
    arrives. Each step is still Eq. 3 at w_t, to 1e-10 in float64 (precision "32-true": no hook
    between the loader and the step, so the next step's batch is lent).
    """
    got = fit_float64(AsyncSAMStrategy(rho=0.3, ascent_batch_size=4, ascent_threads=1, ascent_data=ascent_data),
                      precision="32-true", callbacks=[LatePosts()])
    net = in_float64(lambda: TinyClassifier().net)
    want = reference_asyncsam(net, make_optimizer("sgd", net.parameters()), epochs_of(make_data(), 8, 4), 0.3, 4,
                              ascent_data)
    assert_trajectories_close(got, want)


def test_the_worker_posts_directly_where_no_stream_can(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    try:
        worker.start()
        assert not worker.post_on_stream(torch.device("cpu")) and worker.stream_device is None
        monkeypatch.setattr(Mailbox, "post_on_stream", lambda self, device: True)  # as if CUDA could
        monkeypatch.setenv("ASYNCSAM_STREAM_POST", "0")  # the way out, should it misbehave
        assert not worker.post_on_stream(torch.device("cuda:0")) and worker.stream_device is None
        monkeypatch.setenv("ASYNCSAM_STREAM_POST", "off")  # a misspelt switch is an error that names it
        with pytest.raises(ValueError, match="ASYNCSAM_STREAM_POST='off'"):
            worker.post_on_stream(torch.device("cuda:0"))
        monkeypatch.delenv("ASYNCSAM_STREAM_POST")
        assert worker.post_on_stream(torch.device("cuda:0")) and worker.stream_device == torch.device("cuda:0")
        worker.stream_device = None  # nothing was queued on a stream here
    finally:
        worker.close()


@pytest.mark.parametrize("drained", [True, False])
def test_close_frees_nothing_that_a_failed_stream_still_holds(monkeypatch: pytest.MonkeyPatch, drained: bool) -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    synced: list[torch.device] = []
    unpinned: list[object] = []
    monkeypatch.setattr(worker_module, "_stream_drained", lambda device: synced.append(device) or drained)
    monkeypatch.setattr(worker.weights, "unpin", lambda: unpinned.append(worker.weights))
    monkeypatch.setattr(worker_module, "_UNRELEASABLE", [])
    worker.start()
    pid = worker.pid
    worker.stream_device = torch.device("cuda:0")  # as post_on_stream sets it beside a GPU
    worker.close()
    assert synced == [torch.device("cuda:0")] and worker.stream_device is None
    with pytest.raises(ProcessLookupError):  # stopped (and reaped) either way
        os.kill(pid, 0)
    assert (unpinned == [worker.weights]) is drained
    assert (len(worker_module._UNRELEASABLE) == 1) is not drained


def test_the_tuners_window_starts_when_the_step_reached_the_worker() -> None:
    """Beside a GPU whose stream posts the step, the worker's time starts at the post, not at the submission."""
    sync = AsyncSAMCallback()
    sync._tuner = AscentBatchTuner(32)
    seen: list[float] = []
    sync._tuner.observe = lambda window_ms, ascent_ms, samples: seen.append(window_ms) or False  # type: ignore[method-assign]
    strategy = SimpleNamespace(ascent_batch_size="auto")
    sync._submitted_at = 10.0
    sync._worker = SimpleNamespace(stream_device=None, woke=lambda: 10.002)  # type: ignore[assignment]
    sync._after_ascent(strategy, 1.0, 4, now=10.008)  # type: ignore[arg-type]
    sync._worker = SimpleNamespace(stream_device=torch.device("cuda:0"), woke=lambda: 10.002)  # type: ignore[assignment]
    sync._after_ascent(strategy, 1.0, 4, now=10.008)  # type: ignore[arg-type]
    assert seen == pytest.approx([8.0, 6.0])
