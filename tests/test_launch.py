"""The worker's start method: fork only where it is provably safe, and a forked worker keeps nothing of the trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_asyncsam.ascent import launch
from lightning_asyncsam.ascent.launch import choose_start_method, fork_is_safe
from lightning_asyncsam.ascent.worker import AscentWorker

HERE = Path(__file__).resolve().parent
needs_fork = pytest.mark.skipif(not fork_is_safe(), reason="forking is not safe in this process (see launch.py)")


def test_only_a_one_thread_cpu_worker_in_a_process_without_accelerators_is_forked(monkeypatch) -> None:
    assert choose_start_method("cpu", threads=2) == "spawn"      # would enter OpenMP after fork
    assert choose_start_method("cuda:0", threads=1) == "spawn"   # a forked child cannot use CUDA
    monkeypatch.setattr(launch, "fork_is_safe", lambda: True)
    assert choose_start_method("cpu", threads=1) == "fork"
    monkeypatch.setattr(launch, "fork_is_safe", lambda: False)
    assert choose_start_method("cpu", threads=1) == "spawn"


def test_any_accelerator_or_autograd_device_thread_rules_out_fork(monkeypatch) -> None:
    monkeypatch.setattr(launch.sys, "platform", "linux")
    monkeypatch.setattr(launch, "autograd_device_threads", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.fork_is_safe() is (torch.accelerator.device_count() == 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert launch.fork_is_safe() is False
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(launch, "autograd_device_threads", lambda: 8)
    assert launch.fork_is_safe() is False
    monkeypatch.setattr(launch.sys, "platform", "darwin")
    monkeypatch.setattr(launch, "autograd_device_threads", lambda: 0)
    assert launch.fork_is_safe() is False


class ConvNet(nn.Module):
    """Convolutions in float32 take oneDNN's (mkldnn) path on x86, besides ATen's parallel_for and MKL's GEMM."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


@needs_fork
def test_a_forked_worker_computes_after_the_parent_used_an_openmp_thread_team() -> None:
    """The hang of pytorch/pytorch#17199 does not happen: the parent's team is busy, the worker runs one thread."""
    model = ConvNet()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(3):  # the parent's OpenMP team, oneDNN primitives for 2 threads, autograd
            F.cross_entropy(model(torch.randn(64, 3, 8, 8)), torch.randint(0, 4, (64,))).backward()
        model.zero_grad()
        worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=16)
        try:
            worker.start()
            assert worker.start_method == "fork"
            for step in range(3):
                worker.publish()
                worker.submit(step, (x, y), 16, step)
                worker.collect(timeout=60)  # a hang would end here, as an error, not as a stuck suite
                want = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
                got = worker.grads[step % 2].views()
                assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))
        finally:
            worker.close()
    finally:
        torch.set_num_threads(threads)


@needs_fork
def test_a_forked_worker_takes_the_default_signal_handlers(tmp_path: Path) -> None:
    """The trainer's SIGTERM handler (Lightning installs one) must not run in the worker: SIGTERM just ends it."""
    ran = tmp_path / "handler_ran"
    previous = signal.signal(signal.SIGTERM, lambda *_: ran.write_text(str(os.getpid())))
    model = nn.Linear(3, 1)
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=4)
    try:
        worker.start()
        worker.wait_ready(timeout=60)
        proc = worker._process
        assert worker.start_method == "fork" and proc is not None
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(10)
        assert proc.exitcode == -signal.SIGTERM and not ran.exists()
    finally:
        worker.close()
        signal.signal(signal.SIGTERM, previous)


CHILD_EXIT = """
import atexit, sys
import torch
from lightning_asyncsam.ascent.worker import AscentWorker
from tiny import TinyClassifier, make_data

atexit.register(lambda: open(sys.argv[1], "a").write("atexit\\n"))
model = TinyClassifier()
worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=4)
worker.start()
worker.publish()
worker.submit(0, make_data(dtype=torch.float32).tensors, 4, 0)
worker.collect(timeout=60)
print(worker.start_method)
worker.close()
"""


@pytest.mark.slow  # a fresh interpreter
@needs_fork
def test_a_forked_worker_never_runs_the_parents_exit_handlers(tmp_path: Path) -> None:
    log = tmp_path / "exits"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    done = subprocess.run([sys.executable, "-c", CHILD_EXIT, str(log)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["fork"]
    assert log.read_text() == "atexit\n"  # the parent's, once; the worker left with os._exit
