"""Writers of tiny datasets in their real on-disk formats, for the data and training tests.

Tests never download: each writer lays out a few samples exactly as the real archive extracts
(pickles, JPEG trees, .mat files, WAV files), so the datamodules read them with the same code
paths they use on the real data. Sample contents are deterministic functions of the index, so
tests can check that what is read back is what was written.
"""

from __future__ import annotations

import pickle
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_asyncsam.app.data.speech_commands import SAMPLE_RATE, WORDS_V2


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real CIFAR pickles are protocol 2 (Python 2)


def cifar_images(n: int, offset: int = 0) -> np.ndarray:
    """``n`` distinct 32x32 RGB images as CIFAR stores them: uint8 rows of 3072 (R plane, G, B)."""
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 4) -> Path:
    """Write ``cifar-10-batches-py/`` with 5 training batches of ``per_batch`` images and a test batch.

    Labels are ``index % 10``. Returns the folder written.
    """
    folder = root / "cifar-10-batches-py"
    for b in range(1, 6):
        data = cifar_images(per_batch, offset=b)
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _pickle(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [i % 10 for i in range(n_test)],
            "data": cifar_images(n_test, offset=99),
            "filenames": [f"t{i}.png" for i in range(n_test)],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072})
    return folder


def write_cifar100(root: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """Write ``cifar-100-python/`` (``train``, ``test``, ``meta``); fine labels are ``(7 * index) % 100``."""
    folder = root / "cifar-100-python"
    for name, n, offset in (("train", n_train, 1), ("test", n_test, 2)):
        fine = [(7 * i) % 100 for i in range(n)]
        _pickle(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": cifar_images(n, offset=offset),
            },
        )
    _pickle(
        folder / "meta",
        {"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": [f"super{i}" for i in range(20)]},
    )
    return folder


def write_flowers102(root: Path, per_split: int = 4) -> Path:
    """Write ``flowers-102/`` (``jpg/``, ``imagelabels.mat``, ``setid.mat``) with ``3 * per_split`` images.

    Image ids ``1..per_split`` are ``trnid``, the next ``per_split`` ``valid``, the rest ``tstid``;
    image ``k`` has label ``(k * 13) % 102 + 1`` (1-based, as in the real file) and a size that
    varies, as the real photos' do.
    """
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    n = 3 * per_split
    for k in range(1, n + 1):
        rgb = np.full((40 + 3 * k, 50 + 2 * k, 3), (k * 20) % 256, dtype=np.uint8)
        Image.fromarray(rgb).save(folder / "jpg" / f"image_{k:05d}.jpg", quality=90)
    labels = np.array([[(k * 13) % 102 + 1 for k in range(1, n + 1)]], dtype=np.uint8)
    savemat(folder / "imagelabels.mat", {"labels": labels})
    ids = np.arange(1, n + 1, dtype=np.uint16)
    savemat(
        folder / "setid.mat",
        {
            "trnid": ids[None, :per_split],
            "valid": ids[None, per_split : 2 * per_split],
            "tstid": ids[None, 2 * per_split :],
        },
    )
    return folder


def flowers102_label(image_id: int) -> int:
    """0-based label that :func:`write_flowers102` gives image ``image_id``."""
    return (image_id * 13) % 102


def tiny_imagenet_wnids() -> list[str]:
    """The 200 class ids :func:`write_tiny_imagenet` writes, in ``wnids.txt`` order (not sorted)."""
    return [f"n{(i * 7919) % 100000:08d}" for i in range(200)]


def write_tiny_imagenet(root: Path, val_images: int = 6) -> Path:
    """Write ``tiny-imagenet-200/`` with one 64x64 training image per class and ``val_images`` validation ones.

    Validation image ``i`` belongs to class ``wnids[i * 31 % 200]``; training image of class ``c``
    has grey level ``c``; the first training image is grayscale, as some real ones are.
    """
    folder = root / "tiny-imagenet-200"
    wnids = tiny_imagenet_wnids()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        mode, shape = ("L", (64, 64)) if c == 0 else ("RGB", (64, 64, 3))
        Image.fromarray(np.full(shape, c, dtype=np.uint8), mode=mode).save(images / f"{wnid}_0.JPEG", quality=95)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(val_images):
        Image.fromarray(np.full((64, 64, 3), 255 - i, dtype=np.uint8)).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i * 31 % 200]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (folder / "test" / "images").mkdir(parents=True, exist_ok=True)
    return folder


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM, the format of the Speech Commands clips, with the stdlib."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(samples * 32767, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sine of amplitude 0.5."""
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def write_speech_commands(root: Path, clips_per_word: int = 2) -> Path:
    """Write ``speech_commands_v0.02/``: every word's clips, the split lists and background noise.

    Clip ``j`` of word ``w`` is ``<hash>_nohash_<j>.wav``: a tone of ``200 + 100 * w`` Hz lasting
    0.5 s (shorter than the 1 s the loader pads to), except clip 0 of the first word, which lasts
    1.25 s (to be cropped). Clip 0 of words 0-4 is in ``validation_list.txt``, clip 0 of words
    5-7 in ``testing_list.txt``.
    """
    folder = root / "speech_commands_v0.02"
    val, test = [], []
    for w, word in enumerate(WORDS_V2):
        for j in range(clips_per_word):
            name = f"{w:04x}beef_nohash_{j}.wav"
            seconds = 1.25 if (w, j) == (0, 0) else 0.5
            write_wav(folder / word / name, tone(200 + 100 * w, seconds))
            if j == 0 and w < 5:
                val.append(f"{word}/{name}")
            elif j == 0 and w < 8:
                test.append(f"{word}/{name}")
    (folder / "validation_list.txt").write_text("\n".join(val) + "\n")
    (folder / "testing_list.txt").write_text("\n".join(test) + "\n")
    write_wav(
        folder / "_background_noise_" / "white_noise.wav", np.random.default_rng(0).uniform(-0.1, 0.1, 2 * SAMPLE_RATE)
    )
    (folder / "LICENSE").write_text("CC-BY-4.0\n")
    return folder


def save_tiny_vit_weights(path: Path, num_classes: int = 1000, **dims: int) -> dict[str, object]:
    """Save a state_dict of a tiny torchvision ViT (``num_classes``-way head) to ``path``; return it."""
    import torch
    from torchvision.models import VisionTransformer

    net = VisionTransformer(num_classes=num_classes, **dims)
    state = net.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


TINY_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}


# ----------------------------------------------------------------------------- composed configs
#: Overrides that make any recipe run on this machine's CPU in a test: no loader processes, no
#: pinned memory, tiny batches, no progress bar.
CPU_TEST_OVERRIDES = [
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "data.pin_memory=false",
    "callbacks.progress_bar.refresh_rate=0",
    "++trainer.enable_model_summary=false",
]


def compose_train(overrides: list[str], output_dir: Path | None = None) -> object:
    """Compose ``asyncsam-train``'s config from the installed package, as the CLI would.

    ``paths.output_dir`` (``${hydra:runtime.output_dir}`` under the CLI) is set to ``output_dir``
    when given, since no Hydra run exists here.
    """
    from hydra import compose, initialize_config_module

    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_module(config_module="lightning_asyncsam.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *extra])
