"""Speech Commands read from a tiny copy of the real WAV tree, and the log-mel front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import tone, write_speech_commands, write_wav

from lightning_asyncsam.app.data import DatasetNotFoundError, SpeechCommandsDataModule
from lightning_asyncsam.app.data.logmel import LogMel, hz_to_mel, mel_filterbank, mel_to_hz
from lightning_asyncsam.app.data.speech_commands import SAMPLE_RATE, WORDS_V2


def test_v002_has_35_sorted_words() -> None:
    assert len(WORDS_V2) == 35 and list(WORDS_V2) == sorted(WORDS_V2)
    assert {"backward", "follow", "forward", "learn", "visual"} <= set(WORDS_V2)


def test_splits_follow_the_lists_and_ignore_background_noise(tmp_path: Path) -> None:
    write_speech_commands(tmp_path, clips_per_word=2)
    dm = SpeechCommandsDataModule(root=tmp_path, batch_size=8)
    dm.setup()
    # 70 clips: 5 validation, 3 test (left out), 62 training; no background noise anywhere.
    assert len(dm.val_set) == 5 and len(dm.train_set) == 62
    assert all("_background_noise_" not in str(p) for p in dm.train_set.files + dm.val_set.files)
    assert sorted(dm.val_set.labels) == [0, 1, 2, 3, 4]
    test_words = {WORDS_V2[w] for w in (5, 6, 7)}
    assert all(not (p.parent.name in test_words and p.name.endswith("_0.wav")) for p in dm.train_set.files)
    for path, label in zip(dm.train_set.files, dm.train_set.labels, strict=True):
        assert WORDS_V2[label] == path.parent.name


def test_clips_are_padded_or_cropped_to_one_second(tmp_path: Path) -> None:
    write_speech_commands(tmp_path)
    dm = SpeechCommandsDataModule(root=tmp_path, batch_size=4, max_shift_ms=0)
    dm.setup()
    short = dm.val_set.load(1)  # 0.5 s clip
    assert short.shape == (SAMPLE_RATE,) and torch.all(short[SAMPLE_RATE // 2 + 1 :] == 0)
    assert short[: SAMPLE_RATE // 2].abs().max() > 0.4
    long_index = next(i for i, p in enumerate(dm.val_set.files) if p.parent.name == WORDS_V2[0])
    assert dm.val_set.load(long_index).shape == (SAMPLE_RATE,)  # the 1.25 s clip is cropped
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 1, 40, 101) and y.dtype == torch.long and torch.isfinite(x).all()


def test_time_shift_moves_the_clip_and_zero_fills(tmp_path: Path) -> None:
    write_speech_commands(tmp_path)
    dm = SpeechCommandsDataModule(root=tmp_path, batch_size=4, max_shift_ms=100)
    dm.setup()
    torch.manual_seed(0)
    features = torch.stack([dm.train_set[0][0] for _ in range(6)])
    assert (features - features[0]).abs().amax() > 0.1


def test_wrong_sample_rate_is_an_error(tmp_path: Path) -> None:
    folder = write_speech_commands(tmp_path)
    write_wav(folder / WORDS_V2[9] / "bad_nohash_0.wav", tone(440, 0.5, rate=8000), rate=8000)
    dm = SpeechCommandsDataModule(root=tmp_path, batch_size=4)
    dm.setup()
    index = next(i for i, p in enumerate(dm.train_set.files) if p.name == "bad_nohash_0.wav")
    with pytest.raises(ValueError, match="8000 Hz"):
        dm.train_set[index]


def test_missing_word_folders_are_named(tmp_path: Path) -> None:
    folder = write_speech_commands(tmp_path, clips_per_word=1)
    for word in ("visual", "wow"):
        for f in (folder / word).iterdir():
            f.unlink()
        (folder / word).rmdir()
    with pytest.raises(DatasetNotFoundError) as info:
        SpeechCommandsDataModule(root=tmp_path, batch_size=4).setup()
    text = str(info.value)
    assert "visual, wow" in text and "speech_commands_v0.02.tar.gz" in text and str(folder) in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"num_classes": 12}, "num_classes"), ({"max_shift_ms": -1}, "max_shift_ms"), ({"n_mels": 0}, "n_mels")],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SpeechCommandsDataModule(**{"batch_size": 4, **kwargs})


# ----------------------------------------------------------------------------- the log-mel front end
def test_mel_scale_round_trips() -> None:
    f = torch.tensor([0.0, 700.0, 1000.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f)
    assert abs(float(hz_to_mel(torch.tensor(1000.0))) - 999.985) < 0.01  # HTK: 1000 Hz ~ 1000 mel


def test_filterbank_triangles_peak_at_their_centres() -> None:
    fb = mel_filterbank(n_freqs=257, n_mels=20, sample_rate=16000, f_min=0.0, f_max=8000.0)
    assert fb.shape == (257, 20) and fb.min() >= 0 and fb.max() <= 1
    peaks = fb.argmax(0)
    assert torch.all(peaks[1:] > peaks[:-1])  # bands are ordered by frequency
    bin_hz = 8000 / 256
    centres = mel_to_hz(torch.linspace(0, float(hz_to_mel(torch.tensor(8000.0))), 22)[1:-1])
    assert torch.all((peaks * bin_hz - centres).abs() <= bin_hz)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_a_tone_lights_the_band_around_its_frequency(freq: float) -> None:
    logmel = LogMel()
    features = logmel(torch.from_numpy(tone(freq, 1.0)).float())
    assert features.shape == (40, 101)
    band = int(features[:, 10:90].mean(1).argmax())
    centres = mel_to_hz(
        torch.linspace(float(hz_to_mel(torch.tensor(20.0))), float(hz_to_mel(torch.tensor(8000.0))), 42)
    )[1:-1]
    assert abs(band - int((centres - freq).abs().argmin())) <= 1


def test_batched_features_equal_per_clip_features() -> None:
    logmel = LogMel(n_mels=64)
    waves = torch.from_numpy(np.stack([tone(500, 1.0), tone(2000, 1.0)])).float()
    batch = logmel(waves)
    assert batch.shape == (2, 64, logmel.num_frames(SAMPLE_RATE))
    torch.testing.assert_close(batch[1], logmel(waves[1]))


def test_silence_stays_finite_and_bad_sizes_are_refused() -> None:
    assert torch.isfinite(LogMel()(torch.zeros(SAMPLE_RATE))).all()
    with pytest.raises(ValueError, match="n_fft"):
        LogMel(n_fft=0)
    with pytest.raises(ValueError, match="f_max"):
        LogMel(f_max=9000.0)
