"""The trainer and its ascent worker on disjoint cores (ascent_cpus)."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

from lightning_asyncsam import AsyncSAMStrategy
from lightning_asyncsam.ascent.affinity import ProcessAffinity, available_cores, split_cores
from tiny import TinyClassifier, loader, make_data, trainer

CORES = available_cores()
needs_two_cores = pytest.mark.skipif(CORES is None or len(CORES) < 2, reason="needs Linux and two cores")


@pytest.mark.parametrize(
    ("cores", "rank", "ranks", "threads", "expected"),
    [
        ([0, 1], 0, 1, 1, ([0], [1])),          # this project's machine: one core each
        ([0, 1], 0, 1, 8, ([0], [1])),          # the trainer always keeps one
        (range(16), 0, 1, 15, ([0], list(range(1, 16)))),
        (range(16), 1, 2, 3, ([8, 9, 10, 11, 12], [13, 14, 15])),  # rank 1 of 2 works in cores 8..15
        ([3, 5, 7, 9], 0, 1, 2, ([3, 5], [7, 9])),  # a restricted set (taskset, a cgroup)
        ([0, 1], 1, 2, 1, None),                # one core per rank: nothing to split
    ],
)
def test_split_cores(cores, rank, ranks, threads, expected) -> None:
    assert split_cores(cores, rank, ranks, threads) == expected


@needs_two_cores
def test_process_affinity_confines_every_thread_and_restores_it() -> None:
    pinning = ProcessAffinity()
    pinning.confine(CORES[:1])
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    assert all(os.sched_getaffinity(t) == {CORES[0]} for t in tids)
    pinning.restore()
    assert all(os.sched_getaffinity(t) == set(CORES) for t in tids)


class Cores(L.Callback):
    def __init__(self) -> None:
        self.main: set[int] | None = None
        self.worker: set[int] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.main = os.sched_getaffinity(0)
        self.worker = os.sched_getaffinity(trainer.strategy.worker.pid)


@needs_two_cores
@pytest.mark.parametrize("ascent_cpus", ["auto", "last"])
def test_cpu_training_splits_the_cores_and_gives_them_back(ascent_cpus: str) -> None:
    worker_cores = [CORES[-1]] if ascent_cpus == "last" else "auto"
    cores = Cores()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1, ascent_cpus=worker_cores), max_epochs=1,
                callbacks=[cores])
    t.fit(TinyClassifier(), loader(make_data(dtype=torch.float32), 8))
    assert cores.worker == {CORES[-1]}
    assert cores.main == set(CORES[:-1])
    assert os.sched_getaffinity(0) == set(CORES)  # after fit the trainer has all its cores again


@needs_two_cores
def test_no_pinning_by_default() -> None:
    cores = Cores()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, callbacks=[cores])
    t.fit(TinyClassifier(), loader(make_data(dtype=torch.float32), 8))
    assert cores.main == set(CORES) and cores.worker == set(CORES)


@needs_two_cores
def test_a_failed_fit_gives_the_cores_back() -> None:
    class Boom(TinyClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1, ascent_cpus="auto"), max_epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(Boom(), loader(make_data(dtype=torch.float32), 8))
    assert os.sched_getaffinity(0) == set(CORES)
