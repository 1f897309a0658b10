"""The one-step lookahead behind ascent_data="next"."""

from __future__ import annotations

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
