"""A non-finite ascent gradient is never applied by AsyncSAM: the step runs unperturbed, counted, warned once."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.nn import functional as F

from lightning_asyncsam import AsyncSAMStrategy
from tiny import FiniteOnlyClassifier, loader, make_data, trainer

B, B_ASCENT = 32, 8


def _corrupt_data():
    data = make_data(n=256, dtype=torch.float32)
    data.tensors[0][3 * B + 2] = float("nan")  # within the first b' samples of the fourth batch
    return data


def _fit(strategy):
    t = trainer(strategy, max_epochs=2, log_every_n_steps=1)
    model = FiniteOnlyClassifier()
    t.fit(model, loader(_corrupt_data(), B))
    return t, model


def test_sgd_trains_on_the_corrupt_data() -> None:
    _, model = _fit("auto")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("ascent_data", ["previous", "next"])
def test_asyncsam_skips_a_non_finite_ascent(ascent_data: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, model = _fit(AsyncSAMStrategy(ascent_batch_size=B_ASCENT, ascent_threads=1, ascent_data=ascent_data))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert t.callback_metrics["asyncsam/skipped_ascents"] >= 2  # the bad sample is seen once per epoch
    said = [w for w in caught if "ascent gradient was not finite" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
