"""CIFAR-10/100 read from tiny copies of the real python pickles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from fixtures_data import cifar_images, write_cifar10, write_cifar100

from lightning_asyncsam.app.data import CIFARDataModule, DatasetNotFoundError
from lightning_asyncsam.app.data.cifar import CIFAR10Unchecked
from lightning_asyncsam.app.data.transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD


def _expected(rows: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    images = rows.reshape(-1, 3, 32, 32).float() / 255
    return (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_cifar10_reads_every_batch_and_the_test_set(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2, n_test=4)
    dm = CIFARDataModule("cifar10", root=tmp_path, num_classes=10, batch_size=3)
    dm.setup()
    assert len(dm.train_set) == 10 and len(dm.val_set) == 4
    assert dm.train_set.classes[0] == "airplane"
    assert [dm.val_set[i][1] for i in range(4)] == [0, 1, 2, 3]
    # Validation images are not augmented: they are the written pixels, normalised.
    x = torch.stack([dm.val_set[i][0] for i in range(4)])
    want = _expected(torch.from_numpy(cifar_images(4, offset=99)), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(x, want, atol=1e-5, rtol=0)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (3, 3, 32, 32) and yb.dtype == torch.long


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path, n_train=8, n_test=4)
    dm = CIFARDataModule("cifar100", root=tmp_path, num_classes=100, batch_size=4)
    dm.setup()
    assert len(dm.train_set) == 8 and len(dm.val_set) == 4
    assert [dm.train_set[i][1] for i in range(8)] == [(7 * i) % 100 for i in range(8)]


def test_training_images_are_augmented(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = CIFARDataModule("cifar10", root=tmp_path, num_classes=10, batch_size=2)
    dm.setup()
    torch.manual_seed(0)
    views = torch.stack([dm.train_set[0][0] for _ in range(8)])
    assert views.shape == (8, 3, 32, 32)
    assert (views - views[0]).abs().amax() > 0.1  # random crops and flips differ


def test_vit_resolution_and_imagenet_statistics(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    dm = CIFARDataModule("cifar100", root=tmp_path, num_classes=100, batch_size=2, image_size=224, normalize="imagenet")
    dm.setup()
    x, _ = dm.val_set[0]
    assert x.shape == (3, 224, 224)
    small = CIFARDataModule("cifar100", root=tmp_path, num_classes=100, batch_size=2, normalize="imagenet")
    small.setup()
    want = _expected(torch.from_numpy(cifar_images(4, offset=2))[:1], IMAGENET_MEAN, IMAGENET_STD)[0]
    torch.testing.assert_close(small.val_set[0][0], want, atol=1e-5, rtol=0)


def test_download_is_wired_but_skipped_when_files_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.download=true goes through torchvision's downloader, which finds the files and stops."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests never download")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    write_cifar10(tmp_path)
    calls = []
    original = CIFAR10Unchecked.download
    monkeypatch.setattr(CIFAR10Unchecked, "download", lambda self: calls.append(self.train) or original(self))
    CIFARDataModule("cifar10", root=tmp_path, num_classes=10, batch_size=2, download=True).prepare_data()
    assert calls == [True, False]
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(AssertionError, match="never download"):
        CIFARDataModule("cifar10", root=tmp_path, num_classes=10, batch_size=2, download=True).prepare_data()


def test_md5_check_is_opt_in(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    # torchvision's own class checks md5s: our tiny files fail it, which is reported as incomplete.
    with pytest.raises(DatasetNotFoundError):
        CIFARDataModule("cifar10", root=tmp_path, num_classes=10, batch_size=2, verify_md5=True).setup()


def test_missing_files_are_reported_with_layout_and_url(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        CIFARDataModule("cifar10", root=tmp_path, num_classes=10, batch_size=2).setup()
    text = str(info.value)
    assert str(folder) in text and "data_batch_1" in text and "cifar-10-python.tar.gz" in text
    assert "data.download=true" in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"variant": "cifar1000"}, "variant"),
        ({"variant": "cifar100", "num_classes": 10}, "num_classes"),
        ({"image_size": 16}, "image_size"),
        ({"normalize": "none"}, "normalize"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        CIFARDataModule(**{"variant": "cifar10", "num_classes": 10, "batch_size": 2, **kwargs})
