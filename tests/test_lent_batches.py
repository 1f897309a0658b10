"""Lent batches (issue 11): the worker reads the next step's batch from the trainer's memory, and the trainer
copies nothing, holds the batch until the worker has used it, and copies where the worker cannot read."""

from __future__ import annotations

import gc
import os
import time
import weakref

import pytest
import torch
from torch.nn import functional as F

import lightning as L
from lightning_asyncsam import AsyncSAMStrategy
from lightning_asyncsam.ascent import lent_batch
from lightning_asyncsam.ascent import worker_process as worker_module  # where the worker process probes
from lightning_asyncsam.ascent.buffers import BatchSlot
from lightning_asyncsam.ascent.lent_batch import BatchPuller, LendingDesk
from lightning_asyncsam.ascent.worker import AscentWorker
from tiny import TinyClassifier, loader, make_data, trainer

pytestmark = pytest.mark.skipif(not lent_batch.available(), reason="process_vm_readv is Linux's")


def _batches(count: int, n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` different batches (a worker that read the wrong one would give another gradient)."""
    x, y = make_data(n=count * n, dtype=torch.float32).tensors
    return [(x[i * n:(i + 1) * n].clone(), y[i * n:(i + 1) * n].clone()) for i in range(count)]


def _want(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], n: int) -> tuple[torch.Tensor, ...]:
    x, y = batch
    return torch.autograd.grad(F.cross_entropy(model(x[:n]), y[:n]), list(model.parameters()))


def _run(worker: AscentWorker, model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], n: int,
         lend: bool = True) -> list[int]:
    """Each batch as one ascent step; checks each gradient, returns how many tensors each step lent."""
    lent = []
    for step, batch in enumerate(batches):
        worker.publish()
        worker.submit(step, batch, n, batch_idx=step, lend=lend)
        lent.append(worker.slot.lent)
        worker.collect(timeout=30)
        got = worker.grads[step % 2].views()
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, _want(model, batch, n))), step
    return lent


def test_a_lent_batch_gives_the_gradient_of_the_batch_and_the_trainer_copies_nothing(monkeypatch) -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    batches = _batches(3)
    sources = {id(t): i for i, batch in enumerate(batches) for t in batch}
    copied: list[int] = []
    copy = torch.Tensor.copy_

    def recording(self: torch.Tensor, src: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if id(src) in sources:
            copied.append(sources[id(src)])
        return copy(self, src, *args, **kwargs)

    try:
        worker.start()
        worker.wait_ready(timeout=60)
        assert worker.slot.desk is not None  # the worker could read this process's memory
        monkeypatch.setattr(torch.Tensor, "copy_", recording)
        # The first batch sets the layout (copied); the others are lent, b' = b and b' < b.
        assert _run(worker, model, batches, n=8) == [0, 2, 2]
        monkeypatch.setattr(torch.Tensor, "copy_", copy)
        assert _run(worker, model, _batches(3), n=5)[1:] == [2, 2]
    finally:
        worker.close()
    assert copied == [0, 0]  # the first batch's two tensors, into the slot; the lent ones, none


def test_the_trainer_holds_a_lent_batch_until_its_next_submission_and_the_close() -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    first, second, third = _batches(3)
    try:
        worker.start()
        _run(worker, model, [first], n=8)  # the layout
        ref = weakref.ref(second[0])
        worker.publish()
        worker.submit(1, second, 8, batch_idx=1, lend=True)
        assert worker.slot.lent == 2
        del second
        gc.collect()
        assert ref() is not None  # held while the worker may still read it
        worker.collect(timeout=30)
        worker.publish()
        worker.submit(2, third, 8, batch_idx=2, lend=True)
        gc.collect()
        assert ref() is None  # its result was collected: released at the next submission
        worker.collect(timeout=30)
        held = weakref.ref(third[0])
        del third
    finally:
        worker.close()
    gc.collect()
    assert held() is None


@pytest.mark.parametrize("kind", ["strided", "not asked", "complex"])
def test_batches_that_cannot_be_lent_are_copied(kind: str) -> None:
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    batches = _batches(3)
    if kind == "strided":  # the same values, laid out with a stride: its rows are no prefix of its memory
        batches = [(x.t().contiguous().t(), y) for x, y in batches]
        assert not batches[1][0].is_contiguous()
    try:
        worker.start()
        if kind == "complex":
            slot = worker.slot
            worker.wait_ready(timeout=60)
            z = [(torch.zeros(8, 2, dtype=torch.complex64), torch.zeros(8)) for _ in range(2)]
            for batch in z:  # the layout, then a batch shaped like it
                slot.write(batch, 8, lend=True)
                assert slot.lent == 0
            return
        assert _run(worker, model, batches, n=8, lend=kind != "not asked") == [0, 0, 0]
    finally:
        worker.close()


def test_where_the_worker_cannot_read_the_trainer_copies(monkeypatch) -> None:
    """A failed start-up probe (Yama's stricter scopes, a seccomp profile, another OS): the batches are copied."""
    monkeypatch.setattr(worker_module, "probe", lambda *args: False)  # the forked worker inherits it
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    try:
        worker.start()
        assert _run(worker, model, _batches(3), n=8) == [0, 0, 0]
        assert worker.slot.desk is None
    finally:
        worker.close()


def _count_lent(monkeypatch) -> list[int]:
    """How many tensors each write of a batch slot lends, from now on."""
    lent: list[int] = []
    write = BatchSlot.write

    def counting(self: BatchSlot, batch: object, n: int, lend: bool = False) -> bool:
        changed = write(self, batch, n, lend)
        lent.append(self.lent)
        return changed

    monkeypatch.setattr(BatchSlot, "write", counting)
    return lent


def test_a_fit_lends_its_batches_and_follows_the_copying_fit_bitwise(monkeypatch) -> None:
    lent = _count_lent(monkeypatch)
    data = make_data(n=32, dtype=torch.float32)
    model = TinyClassifier()
    trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2).fit(model, loader(data, 8))
    # Per epoch of 4 steps: the last takes the epoch's own batch (no next one), the fit's first write sets the layout.
    assert lent == [0, 2, 2, 0, 2, 2, 2, 0]
    monkeypatch.setattr(worker_module, "probe", lambda *args: False)
    copied = TinyClassifier()
    trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=2).fit(copied, loader(data, 8))
    assert lent[8:] == [0] * 8
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copied.parameters()))


@pytest.mark.parametrize("hook", ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"])
def test_a_batch_with_transfer_hooks_is_not_lent(hook: str, monkeypatch) -> None:
    """A user's hook may change the batch in place before its step (on a CPU trainer, the after-transfer hook gets
    the host batch itself), maybe under the worker's read: the worker gets a copy made before."""
    lent = _count_lent(monkeypatch)

    def unchanged(self, batch, *args):  # noqa: ANN001, ANN202
        return batch

    hooked = type("Hooked", (TinyClassifier,), {hook: unchanged})
    trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1).fit(
        hooked(), loader(make_data(n=32, dtype=torch.float32), 8))
    assert lent and not any(lent)


def test_a_precision_cast_is_lent(monkeypatch) -> None:
    """A precision plugin's cast makes new tensors (or returns the batch as it is), never changing one in place."""
    lent = _count_lent(monkeypatch)
    model = TinyClassifier().double()
    trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, precision="64-true").fit(
        model, loader(make_data(n=32, dtype=torch.float32), 8))
    assert lent == [0, 2, 2, 0]


def test_a_failed_read_names_the_call_and_the_trainer() -> None:
    buffers = [torch.zeros(4, 2)]
    desk = LendingDesk()
    desk._addresses[0] = 8  # no mapping there
    with pytest.raises(OSError, match=rf"process_vm_readv.*pid {os.getpid()}|pid {os.getpid()}.*process_vm_readv"):
        BatchPuller(os.getpid()).pull(buffers, 4, desk)


def test_one_worker_at_a_time_holds_the_right_to_read() -> None:
    assert lent_batch.allow_reader(123456)
    try:
        assert not lent_batch.allow_reader(123457)  # the first one's reads would fail under Yama
        assert lent_batch.allow_reader(123456)
        lent_batch.revoke_reader(123457)  # not its right: nothing changes
        assert not lent_batch.allow_reader(123457)
    finally:
        lent_batch.revoke_reader(123456)
    assert lent_batch.allow_reader(123457)
    lent_batch.revoke_reader(123457)


def test_the_probe_tells_a_readable_buffer_from_a_wrong_one() -> None:
    buf = torch.frombuffer(bytearray(b"asyncsam-probe!!"), dtype=torch.uint8)
    assert lent_batch.probe(os.getpid(), buf.data_ptr(), b"asyncsam-probe!!")
    assert not lent_batch.probe(os.getpid(), buf.data_ptr(), b"something else!!")
    assert not lent_batch.probe(os.getpid(), 8, b"unmapped")


@pytest.mark.slow
def test_a_spawned_worker_reads_lent_batches_too(monkeypatch) -> None:
    """A fresh interpreter, not a fork of the trainer: it reads the trainer's memory by pid all the same."""
    from lightning_asyncsam.ascent import launch

    monkeypatch.setattr(launch, "fork_is_safe", lambda: False)
    model = TinyClassifier()
    worker = AscentWorker(model, list(model.parameters()), "cpu", threads=1, capacity=8)
    try:
        worker.start()
        assert worker.start_method == "spawn"
        worker.wait_ready(timeout=120)
        assert _run(worker, model, _batches(3), n=8) == [0, 2, 2]
    finally:
        worker.close()


def test_the_puller_follows_a_new_layout_even_where_ids_are_reused() -> None:
    """The worker's cached copy plan is keyed by the buffers' addresses and row sizes: a new layout's buffers (which
    may reuse a freed buffer's id) get a new plan."""
    puller = BatchPuller(os.getpid())
    source = [torch.arange(8.0).view(4, 2)]
    desk = LendingDesk()
    desk.lend(source)
    reused = 0
    for _ in range(20):
        first = [torch.zeros(4, 2)]
        puller.pull(first, 4, desk)
        assert torch.equal(first[0], source[0])
        # Its memory stays mapped (held by another tensor on its storage, not a view); its object is freed.
        kept, old = torch.empty(0).set_(first[0].untyped_storage()), id(first[0])
        del first
        kept.zero_()  # a pull into the old buffer would show here
        second = [torch.zeros(4, 2)]  # CPython often hands the freed object's id to the new tensor
        reused += id(second[0]) == old
        puller.pull(second, 4, desk)
        assert torch.equal(second[0], source[0]) and not kept.any()
    assert reused  # the case this guards against happened
    wide = [torch.arange(12.0).view(4, 3)]
    desk.lend(wide)
    third = [torch.zeros(4, 3)]
    puller.pull(third, 2, desk)
    assert torch.equal(third[0][:2], wide[0][:2]) and not third[0][2:].any()


def test_the_worker_reads_a_lent_batch_before_its_read_post(monkeypatch) -> None:
    """With live weights the trainer takes the "read" post before its step ends; the next step's hooks (which get
    the host batch itself on a CPU trainer) may then change the lent batch: the worker has read it by then."""
    from test_live_weights import _live_worker

    pull = BatchPuller.pull

    def late(self: BatchPuller, *args: object) -> None:
        time.sleep(0.3)  # a worker descheduled between its read of w_t and its read of the batch
        pull(self, *args)

    monkeypatch.setattr(BatchPuller, "pull", late)  # the forked worker inherits it
    model = TinyClassifier()
    worker, flat, params = _live_worker(model)
    first, second = _batches(2)
    try:
        worker.start()
        worker.submit(0, first, 8, batch_idx=0, lend=True)  # the layout: copied
        worker.await_read(timeout=30)
        worker.collect(timeout=30)
        want = _want(model, second, 8)
        worker.submit(1, second, 8, batch_idx=1, lend=True)
        assert worker.slot.lent == 2
        worker.await_read(timeout=30)
        second[0].zero_()  # what an in-place hook of the next step would do
        worker.collect(timeout=30)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(worker.grads[1].views(), want))
    finally:
        worker.close()
        flat.release()


def test_a_cpu_fit_without_live_weights_copies_its_batches(monkeypatch) -> None:
    """No "read" post to order the worker's read before the next step's hooks: the batches are copied."""
    from lightning_asyncsam.ascent.flat_params import FlatParameters

    monkeypatch.setattr(FlatParameters, "share", lambda self: False)  # as where /dev/shm has no room
    lent = _count_lent(monkeypatch)
    trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1).fit(
        TinyClassifier(), loader(make_data(n=32, dtype=torch.float32), 8))
    assert lent and not any(lent)
