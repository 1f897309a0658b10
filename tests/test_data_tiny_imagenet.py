"""Tiny-ImageNet read from a tiny copy of the real ``tiny-imagenet-200`` tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_data import tiny_imagenet_wnids, write_tiny_imagenet

from lightning_asyncsam.app.data import DatasetNotFoundError, TinyImageNetDataModule
from lightning_asyncsam.app.data.tiny_imagenet import TinyImageNetSplit


def test_labels_follow_wnids_order_in_both_splits(tmp_path: Path) -> None:
    folder = write_tiny_imagenet(tmp_path, val_images=6)
    wnids = tiny_imagenet_wnids()
    train = TinyImageNetSplit(folder, "train")
    val = TinyImageNetSplit(folder, "val")
    assert len(train) == 200 and len(val) == 6
    # Training image of class c has grey level c; its label must be c (the wnids.txt order).
    for c in (0, 1, 57, 199):
        path, label = next((p, lbl) for p, lbl in train.samples if p.parent.parent.name == wnids[c])
        assert label == c
        assert abs(int(train[train.samples.index((path, label))][0].getpixel((5, 5))[0]) - c) <= 2
    assert [label for _, label in val.samples] == [i * 31 % 200 for i in range(6)]


def test_grayscale_images_become_rgb_tensors(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    dm = TinyImageNetDataModule(root=tmp_path, batch_size=4)
    dm.setup()
    x, label = dm.train_set[0]  # class 0's image is grayscale
    assert label == 0 and x.shape == (3, 64, 64)
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.shape == (4, 3, 64, 64) and yb.dtype == torch.long


def test_missing_tree_is_reported_with_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        TinyImageNetDataModule(root=tmp_path, batch_size=4).setup()
    text = str(info.value)
    assert str(tmp_path / "tiny-imagenet-200") in text and "val_annotations.txt" in text
    assert "tiny-imagenet-200.zip" in text


def test_unknown_validation_class_is_an_error(tmp_path: Path) -> None:
    folder = write_tiny_imagenet(tmp_path)
    with (folder / "val" / "val_annotations.txt").open("a") as f:
        f.write("val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n99999999"):
        TinyImageNetSplit(folder, "val")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        TinyImageNetDataModule(num_classes=100, batch_size=4)
    with pytest.raises(ValueError, match="split"):
        TinyImageNetSplit(Path("."), "test")
