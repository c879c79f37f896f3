"""The log-mel spectrogram of the audio domain: vocoder conditioning, spectrogram pictures and metrics."""

from __future__ import annotations

import torch

from src.env_check import import_torchaudio

torchaudio = import_torchaudio()


class LogMel:
    """``(..., L)`` -> natural-log mel power ``(..., n_mels, frames)`` (torchaudio's MelSpectrogram).

    ``mono``: a clip ``(C, L)`` is mixed to one channel first, giving ``(n_mels, frames)`` (vocoder ``cond``).
    """

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int = 1024, hop_length: int = 256,
                 floor: float = 1e-5, mono: bool = False):
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels)
        self.floor, self.mono = floor, mono

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(0) if self.mono else x
        return torch.log(self.mel.to(x.device)(x.float()).clamp_min(self.floor))


def log_mel(x: torch.Tensor, sample_rate: int, n_mels: int = 64, n_fft: int = 1024,
            hop_length: int = 256) -> torch.Tensor:
    """``(..., L)`` -> natural-log mel power ``(..., n_mels, frames)``."""
    return LogMel(sample_rate, n_mels, n_fft, hop_length)(x)
