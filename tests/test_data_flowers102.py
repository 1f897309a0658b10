"""Oxford Flowers102 read from a tiny copy of the real tree (jpg/, imagelabels.mat, setid.mat)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from fixtures_data import flowers102_label, write_flowers102

from lightning_asyncsam.app.data import DatasetNotFoundError, Flowers102DataModule


def test_official_splits_and_zero_based_labels(tmp_path: Path) -> None:
    write_flowers102(tmp_path, per_split=4)
    dm = Flowers102DataModule(root=tmp_path, batch_size=2, image_size=32)
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_set) == 4  # train ids 1-4, test ids 9-12
    assert [dm.train_set[i][1] for i in range(4)] == [flowers102_label(k) for k in range(1, 5)]
    assert [dm.val_set[i][1] for i in range(4)] == [flowers102_label(k) for k in range(9, 13)]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.long


def test_trainval_and_val_splits(tmp_path: Path) -> None:
    write_flowers102(tmp_path, per_split=3)
    dm = Flowers102DataModule(root=tmp_path, batch_size=2, image_size=32, train_split="trainval", val_split="val")
    dm.setup()
    assert len(dm.train_set) == 6 and len(dm.val_set) == 3
    assert [dm.val_set[i][1] for i in range(3)] == [flowers102_label(k) for k in range(4, 7)]


def test_validation_is_a_deterministic_centre_crop(tmp_path: Path) -> None:
    write_flowers102(tmp_path)
    dm = Flowers102DataModule(root=tmp_path, batch_size=2, image_size=48)
    dm.setup()
    a, b = dm.val_set[0][0], dm.val_set[0][0]
    assert a.shape == (3, 48, 48) and torch.equal(a, b)


def test_download_is_wired_but_skipped_when_files_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests never download")

    monkeypatch.setattr(torchvision.datasets.flowers102, "download_and_extract_archive", no_network)
    monkeypatch.setattr(torchvision.datasets.flowers102, "download_url", no_network)
    folder = write_flowers102(tmp_path)
    Flowers102DataModule(root=tmp_path, batch_size=2, download=True).prepare_data()  # files exist: no fetch
    (folder / "imagelabels.mat").unlink()
    with pytest.raises(AssertionError, match="never download"):
        Flowers102DataModule(root=tmp_path, batch_size=2, download=True).prepare_data()


def test_missing_label_file_is_reported(tmp_path: Path) -> None:
    folder = write_flowers102(tmp_path)
    (folder / "setid.mat").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        Flowers102DataModule(root=tmp_path, batch_size=2).setup()
    text = str(info.value)
    assert str(folder) in text and "setid.mat" in text and "robots.ox.ac.uk" in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 101}, "num_classes"),
        ({"train_split": "all"}, "train_split"),
        ({"val_split": "train"}, "val_split"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Flowers102DataModule(**{"batch_size": 2, **kwargs})
