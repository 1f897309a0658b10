"""The digits datamodule: split, normalisation, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_asyncsam.app.data import DigitsDataModule


def test_split_is_stratified_normalised_and_shaped() -> None:
    dm = DigitsDataModule(batch_size=16, val_fraction=0.2)
    dm.setup()
    x_train, _ = dm.train_set.tensors
    x_val, y_val = dm.val_set.tensors
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    assert len(x_train) + len(x_val) == 1797 and len(x_val) == 360
    # Stratified: every class's share of the validation set is within one image of 20 %.
    counts = np.bincount(load_digits().target, minlength=10)
    assert np.all(np.abs(np.bincount(y_val.numpy(), minlength=10) - 0.2 * counts) <= 1)
    # Normalised with the training statistics.
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-3
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.long


def test_split_depends_on_split_seed_only() -> None:
    a, b, c = (DigitsDataModule(split_seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


def test_images_are_the_sklearn_images() -> None:
    dm = DigitsDataModule(val_fraction=0.5)
    dm.setup()
    x, y = dm.train_set.tensors
    raw = load_digits()
    # Undo the normalisation and find each image among the originals with the same label.
    for i in range(5):
        pixels = x[i, 0].flatten().numpy()
        matches = raw.images.reshape(len(raw.images), -1)[raw.target == int(y[i])]
        restored = (pixels - pixels.min()) / (pixels.max() - pixels.min())
        candidates = (matches - matches.min(1, keepdims=True)) / np.ptp(matches, axis=1, keepdims=True)
        assert np.abs(candidates - restored).max(axis=1).min() < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"val_fraction": 0.0}, "val_fraction"), ({"num_classes": 9}, "num_classes")]
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DigitsDataModule(**kwargs)
