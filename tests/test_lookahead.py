"""The one-step lookahead behind ascent_data="next"."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_asyncsam.ascent.lookahead import LookaheadLoader


def test_yields_the_same_batches_in_the_same_order() -> None:
    dl = DataLoader(TensorDataset(torch.arange(20)), batch_size=3, shuffle=False)
    got = [b[0].tolist() for b in LookaheadLoader(dl, depth=2)]
    assert got == [b[0].tolist() for b in dl]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_peek_sees_depth_batches_ahead_until_the_epoch_ends(depth: int) -> None:
    loader = LookaheadLoader(list(range(6)), depth=depth)
    for _ in range(2):  # a second epoch starts fresh
        seen = []
        for i, x in enumerate(loader):
            assert x == i
            seen.append([loader.peek(k) for k in range(1, depth + 1)])
        assert seen[0] == list(range(1, depth + 1))
        assert seen[-1] == [None] * depth


def test_attributes_reach_the_wrapped_loader() -> None:
    dl = DataLoader(TensorDataset(torch.arange(10)), batch_size=4)
    wrapped = LookaheadLoader(dl)
    assert wrapped.batch_size == 4 and wrapped.sampler is dl.sampler and len(wrapped) == 3
    wrapped.worker_init_fn = print
    assert dl.worker_init_fn is print


def test_bad_depth() -> None:
    with pytest.raises(ValueError, match="depth must be >= 1"):
        LookaheadLoader([], depth=0)


def test_its_own_time_is_counted_apart_from_the_loader_and_taken_once(monkeypatch) -> None:
    """The wrapper's time per batch excludes the wrapped loader's fetch (which SGD pays too).

    A fake clock makes it exact: reading it costs a tick, a fetch of the wrapped loader a second.
    """
    import types

    from lightning_asyncsam.ascent import lookahead

    tick = 2.0 ** -10
    clock = [0.0]

    def perf_counter() -> float:
        clock[0] += tick
        return clock[0]

    monkeypatch.setattr(lookahead, "time", types.SimpleNamespace(perf_counter=perf_counter))

    def fetching():
        for i in range(3):
            clock[0] += 1.0  # the loader's own time
            yield i

    class Loader:
        def __iter__(self):
            return fetching()

        def __len__(self) -> int:
            return 3

    loader = LookaheadLoader(Loader(), depth=1)
    assert list(loader) == [0, 1, 2]
    # Two batches handed over before the loader ran dry, one tick each; none of the loader's 3 s.
    assert loader.take_added_ms() == pytest.approx(2 * tick * 1e3)
    assert loader.take_added_ms() == 0.0  # taken once


class _Doubling(L.Callback):
    """At every batch, the batch that the strategy peeked at the step before (what the worker's ascent used)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._peeked = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self._peeked is not None:
            self.pairs.append((self._peeked[0], batch[0]))
        self._peeked = trainer.strategy.next_step_batch()


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "on_before_batch_transfer"])
def test_the_peeked_batch_is_the_batch_the_loop_hands_the_next_step(hooked) -> None:
    """ascent_data="next": the next step's batch, peeked, as the loop will see it (with the module's transfer hook)."""
    from lightning_asyncsam import AsyncSAMStrategy
    from tiny import TinyClassifier, loader, make_data, trainer

    class Hooked(TinyClassifier):
        def on_before_batch_transfer(self, batch, dataloader_idx):  # noqa: ANN001, ANN201
            x, y = batch
            return 2.0 * x + 1.0, y

    recorder = _Doubling()
    t = trainer(AsyncSAMStrategy(ascent_batch_size=4, ascent_threads=1), max_epochs=1, callbacks=[recorder])
    t.fit((Hooked if hooked else TinyClassifier)(), loader(make_data(n=32, dtype=torch.float32), 8))
    assert len(recorder.pairs) == 3  # four batches: the last one has no next
    for peeked, seen in recorder.pairs:
        assert torch.equal(peeked, seen)
