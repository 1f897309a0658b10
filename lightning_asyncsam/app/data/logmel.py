"""Log-mel spectrogram with ``torch.stft`` and a mel filterbank built here (no torchaudio).

The filterbank is the HTK-style triangular one (``mel = 2595 log10(1 + f / 700)``, no area
normalisation), the same as ``torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk")``,
so features match what a torchaudio pipeline would give.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def hz_to_mel(freq: Tensor) -> Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + freq / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> Tensor:
    """Triangular filters mapping ``n_freqs`` linear STFT bins to ``n_mels`` mel bands.

    Args:
        n_freqs: Number of STFT frequency bins (``n_fft // 2 + 1``).
        n_mels: Number of mel bands.
        sample_rate: Audio sample rate in Hz.
        f_min: Lowest band edge in Hz.
        f_max: Highest band edge in Hz, at most the Nyquist frequency.

    Returns:
        A ``[n_freqs, n_mels]`` matrix; ``power_spectrum.T @ fb`` gives the mel energies.
    """
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}."
        )
    bin_freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    # n_mels triangles need n_mels + 2 edges equally spaced on the mel scale.
    mel_min = hz_to_mel(torch.tensor(f_min, dtype=torch.float64))
    mel_max = hz_to_mel(torch.tensor(f_max, dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(float(mel_min), float(mel_max), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_freqs[:, None] - lower) / (centre - lower)
    falling = (upper - bin_freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """Waveform ``[..., samples]`` to log-mel features ``[..., n_mels, frames]``.

    Defaults are the usual keyword-spotting front end: 30 ms Hann windows every 10 ms at 16 kHz,
    40 mel bands from 20 Hz to 8 kHz, which gives 40 x 101 features for one second.

    Args:
        sample_rate: Audio sample rate in Hz.
        n_fft: STFT window and FFT length in samples.
        hop_length: Samples between frames.
        n_mels: Number of mel bands.
        f_min: Lowest mel band edge in Hz.
        f_max: Highest mel band edge in Hz; ``None`` means the Nyquist frequency.
        eps: Added before the log so that digital silence stays finite.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 480,
        hop_length: int = 160,
        n_mels: int = 40,
        f_min: float = 20.0,
        f_max: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        sizes = {"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.eps = eps
        f_max = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max)
        self.register_buffer("fb", fb, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (``center=True`` pads half a window)."""
        return 1 + num_samples // self.hop_length

    def forward(self, waveform: Tensor) -> Tensor:
        """Compute log-mel features of a float waveform."""
        shape = waveform.shape
        spec = torch.stft(
            waveform.reshape(-1, shape[-1]),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [batch, freqs, frames]
        mel = torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)  # [batch, mels, frames]
        return torch.log(mel + self.eps).reshape(*shape[:-1], mel.shape[-2], mel.shape[-1])
