"""A rank's clean exit: its gloo threads are idle and its process group destroyed before the interpreter finalizes."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.accelerators import CPUAccelerator

from lightning_asyncsam import SAMStrategy
from lightning_asyncsam.strategies import base, process_exit


def _gloo_threads() -> int:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue
    return names.count("pt_gloo_runloop")


def _started_gloo_threads(timeout: float = 10.0) -> int:
    """The gloo threads, once they have started and named themselves (a loaded machine may lag init_process_group)."""
    deadline = time.monotonic() + timeout
    count = _gloo_threads()
    while count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
        count = _gloo_threads()
    return count


@pytest.mark.skipif(not dist.is_available() or not os.path.isdir("/proc/self/task"), reason="needs gloo and /proc")
def test_the_exit_handler_waits_for_gloo_and_destroys_the_group(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert _started_gloo_threads() > 0  # the threads the handler has to wait for exist
        x = torch.ones(3)
        dist.all_reduce(x)  # a Python-owned tensor, released by a gloo thread
        del x
        assert process_exit.quiesce_gloo_threads()
        assert process_exit._busy_gloo_threads() == 0
        process_exit._release_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture
def recorded(monkeypatch):
    """A strategy whose collectives and exit registration are recorded instead of run."""
    calls: list[str] = []
    strategy = SAMStrategy(accelerator=CPUAccelerator(), cluster_environment=LightningEnvironment())
    monkeypatch.setattr(base, "_distributed_is_initialized", lambda: True)
    monkeypatch.setattr(strategy, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(base, "release_process_group_at_exit", lambda: calls.append("release"))
    return strategy, calls


def test_teardown_syncs_the_ranks_and_releases_the_group_it_created(recorded) -> None:
    strategy, calls = recorded
    strategy._owns_process_group = True
    strategy.teardown()
    assert calls == ["barrier", "release"]


def test_teardown_after_an_exception_neither_waits_for_peers_nor_releases(recorded) -> None:
    strategy, calls = recorded
    strategy._owns_process_group = True
    strategy.on_exception(RuntimeError("a rank failed"))
    strategy.teardown()  # a failed peer would never reach a barrier: no hang
    assert calls == []
    strategy.teardown()  # the next stage of the same Trainer ends normally again
    assert calls == ["barrier", "release"]


def test_teardown_leaves_a_group_the_user_created_alone(recorded) -> None:
    strategy, calls = recorded
    strategy.teardown()
    assert calls == []


def test_the_exit_handler_is_registered_once(monkeypatch) -> None:
    registered: list[object] = []
    monkeypatch.setattr(process_exit.atexit, "register", registered.append)
    monkeypatch.setattr(process_exit.atexit, "unregister", lambda f: registered.remove(f) if f in registered else None)
    process_exit.release_process_group_at_exit()
    process_exit.release_process_group_at_exit()
    assert registered == [process_exit._release_process_group]
