"""Google Speech Commands (Warden 2018), version 0.02: 35 words, 1 s clips at 16 kHz.

The paper does not name the version or the features. We use v0.02 with all 35 words as classes
(no "unknown"/"silence" classes, so every clip is one of its own word) and 40-band log-mel
features of 30 ms windows every 10 ms (:mod:`lightning_asyncsam.app.data.logmel`), 40 x 101 per clip.
Splits follow the dataset's own lists: ``validation_list.txt`` is validation,
``testing_list.txt`` is left out, everything else trains. ``_background_noise_/`` is ignored.
Training clips are shifted in time by up to +-100 ms (zero filled), the augmentation of the
TensorFlow speech-commands tutorial the paper's TensorFlow code most likely started from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_asyncsam.app.data.base import ClassificationDataModule, DatasetNotFoundError, check_positive_int
from lightning_asyncsam.app.data.logmel import LogMel

URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
SAMPLE_RATE = 16000
#: The 35 words of v0.02, sorted; a word's label is its index here.
WORDS_V2 = (
    "backward",
    "bed",
    "bird",
    "cat",
    "dog",
    "down",
    "eight",
    "five",
    "follow",
    "forward",
    "four",
    "go",
    "happy",
    "house",
    "learn",
    "left",
    "marvin",
    "nine",
    "no",
    "off",
    "on",
    "one",
    "right",
    "seven",
    "sheila",
    "six",
    "stop",
    "three",
    "tree",
    "two",
    "up",
    "visual",
    "wow",
    "yes",
    "zero",
)
_LAYOUT = """{folder}/
  <word>/<speaker>_nohash_<n>.wav   (one folder per word, 16 kHz mono WAV)
  validation_list.txt               (relative paths of the validation clips)
  testing_list.txt                  (relative paths of the test clips)
  _background_noise_/               (ignored)"""


class SpeechCommandsSplit(Dataset):
    """Clips of one split as ``([1, n_mels, frames] log-mel, label)`` pairs.

    Args:
        files: Paths of the WAV clips.
        labels: Label of each clip.
        features: Waveform-to-log-mel module.
        num_samples: Every clip is zero padded or cropped to this many samples (1 s).
        max_shift: Largest random time shift in samples; 0 disables it (validation).
    """

    def __init__(
        self, files: list[Path], labels: list[int], features: LogMel, num_samples: int, max_shift: int = 0
    ) -> None:
        self.files = files
        self.labels = labels
        self.features = features
        self.num_samples = num_samples
        self.max_shift = max_shift

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> Tensor:
        """Read clip ``i`` as a float waveform of exactly ``num_samples`` samples."""
        audio, rate = sf.read(str(self.files[i]), dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{self.files[i]} has sample rate {rate} Hz; Speech Commands clips are {SAMPLE_RATE} Hz.")
        wave = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=1)))[: self.num_samples]
        return torch.nn.functional.pad(wave, (0, self.num_samples - wave.numel()))

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        wave = self.load(i)
        if self.max_shift > 0:
            shift = int(torch.randint(-self.max_shift, self.max_shift + 1, ()).item())
            wave = torch.roll(wave, shift)
            # Zero what rolled round the end, so a shift never moves speech from one end to the other.
            if shift > 0:
                wave[:shift] = 0.0
            elif shift < 0:
                wave[shift:] = 0.0
        with torch.no_grad():
            return self.features(wave).unsqueeze(0), self.labels[i]


class SpeechCommandsDataModule(ClassificationDataModule):
    """Speech Commands v0.02 as log-mel images for a CNN.

    Args:
        root: Folder holding ``speech_commands_v0.02/``.
        num_classes: Must equal the number of words (35).
        batch_size: Training batch size ``b`` (128 in Table A.1).
        folder_name: Name of the extracted dataset folder under ``root``.
        n_mels: Mel bands of the features.
        max_shift_ms: Largest random time shift of training clips in milliseconds.
        **kwargs: ``num_workers``, ``pin_memory``, ``drop_last`` of
            :class:`~lightning_asyncsam.app.data.base.ClassificationDataModule`.
    """

    def __init__(
        self,
        root: str | Path = "./data",
        num_classes: int = len(WORDS_V2),
        batch_size: int = 128,
        folder_name: str = "speech_commands_v0.02",
        n_mels: int = 40,
        max_shift_ms: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, num_classes=num_classes, batch_size=batch_size, **kwargs)
        if num_classes != len(WORDS_V2):
            raise ValueError(f"num_classes must be {len(WORDS_V2)} (the v0.02 words), got {num_classes!r}.")
        check_positive_int("n_mels", n_mels)
        if isinstance(max_shift_ms, bool) or not isinstance(max_shift_ms, int) or max_shift_ms < 0:
            raise ValueError(f"max_shift_ms must be an integer >= 0, got {max_shift_ms!r}.")
        self.folder = self.root / folder_name
        self.n_mels = n_mels
        self.max_shift = max_shift_ms * SAMPLE_RATE // 1000

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Train on every listed-nowhere clip; validate on ``validation_list.txt``."""
        missing = [w for w in WORDS_V2 if not (self.folder / w).is_dir()]
        lists = [self.folder / name for name in ("validation_list.txt", "testing_list.txt")]
        if missing or not all(p.is_file() for p in lists):
            raise DatasetNotFoundError(
                "Speech Commands v0.02",
                self.folder,
                layout=_LAYOUT.format(folder=self.folder),
                how_to_get=(
                    f"download {URL} and extract it into {self.folder} (the archive has no top "
                    "folder; no downloader: data.download must be false)."
                    + (f" Missing word folders: {', '.join(missing)}." if missing else "")
                ),
            )
        val_names, test_names = ({line.strip() for line in p.read_text().splitlines() if line.strip()} for p in lists)
        train: tuple[list[Path], list[int]] = ([], [])
        val: tuple[list[Path], list[int]] = ([], [])
        for label, word in enumerate(WORDS_V2):
            for path in sorted((self.folder / word).glob("*.wav")):
                relative = f"{word}/{path.name}"
                if relative in test_names:
                    continue
                files, labels = val if relative in val_names else train
                files.append(path)
                labels.append(label)
        features = LogMel(sample_rate=SAMPLE_RATE, n_mels=self.n_mels)
        return (
            SpeechCommandsSplit(*train, features=features, num_samples=SAMPLE_RATE, max_shift=self.max_shift),
            SpeechCommandsSplit(*val, features=features, num_samples=SAMPLE_RATE),
        )
