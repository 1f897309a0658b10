"""The shared datamodule behaviour: argument checks, loaders, the missing-data error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_asyncsam.app.data.base import ClassificationDataModule, DatasetNotFoundError


class _Toy(ClassificationDataModule):
    def build_datasets(self) -> tuple[Dataset, Dataset]:
        x = torch.arange(10, dtype=torch.float32)[:, None]
        y = torch.arange(10) % 2
        return TensorDataset(x, y), TensorDataset(x[:3], y[:3])


def test_loaders_use_batch_size_and_shuffle_only_training() -> None:
    dm = _Toy(root=".", num_classes=2, batch_size=4)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == 4 and val.batch_size == 4
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert [len(y) for _, y in val] == [3]
    assert sum(len(y) for _, y in train) == 10  # drop_last is off by default


def test_drop_last_applies_to_training_only() -> None:
    dm = _Toy(root=".", num_classes=2, batch_size=4, drop_last=True)
    dm.setup()
    assert sum(len(y) for _, y in dm.train_dataloader()) == 8
    assert sum(len(y) for _, y in dm.val_dataloader()) == 3


def test_setup_builds_once() -> None:
    dm = _Toy(root=".", num_classes=2, batch_size=4)
    dm.setup("fit")
    first = dm.train_set
    dm.setup("validate")
    assert dm.train_set is first


def test_loader_before_setup_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        _Toy(root=".", num_classes=2, batch_size=4).train_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_workers": -1}, "num_workers"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    args = {"root": ".", "num_classes": 2, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        _Toy(**args)


def test_download_is_refused_where_there_is_no_downloader() -> None:
    dm = _Toy(root=".", num_classes=2, batch_size=4, download=True)
    with pytest.raises(ValueError, match="no downloader"):
        dm.prepare_data()


def test_not_found_error_says_where_what_and_how(tmp_path: Path) -> None:
    err = DatasetNotFoundError("Thing", tmp_path / "thing", layout="thing/\n  a.bin", how_to_get="ask nicely")
    assert isinstance(err, FileNotFoundError)
    text = str(err)
    for part in (str(tmp_path / "thing"), "thing/\n  a.bin", "ask nicely", "data.root", "ASYNCSAM_DATA"):
        assert part in text
