"""Scores of a restoration against a clean reference: PSNR/SSIM for images (``src.tools.quality``, the one
definition every tool uses), SI-SDR (torchmetrics) and log-spectral distance for sound. Every method is scored
by the same function."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

from ..quality import psnr, ssim


def image_metrics(reference: np.ndarray, x: np.ndarray) -> dict[str, float]:
    """``(C, H, W)`` in [0, 1]: PSNR (dB) and SSIM (mean over channels) with data range 1."""
    ref, img = np.asarray(reference, np.float64), np.clip(np.asarray(x, np.float64), 0, 1)
    return {"psnr": psnr(ref, img, data_range=1.0), "ssim": ssim(ref, img, data_range=1.0)}


def si_sdr(reference: np.ndarray, x: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019), averaged over channels."""
    ref, est = torch.as_tensor(np.asarray(reference, np.float64)), torch.as_tensor(np.asarray(x, np.float64))
    return float(scale_invariant_signal_distortion_ratio(est, ref, zero_mean=True).mean())


def log_spectral_distance(reference: np.ndarray, x: np.ndarray, n_fft: int = 2048, hop: int = 512,
                          floor_db: float = 80.0) -> float:
    """Mean over frames of the RMS difference of log power spectra in dB (the bandwidth-extension LSD).

    Both spectra are floored ``floor_db`` below the reference's strongest bin, so near-silent bins of a clean
    reference do not dominate. torchaudio has no LSD, so it is these few lines over its STFT.
    """
    n_fft = min(n_fft, 2 ** int(np.log2(max(reference.shape[-1], 16))))
    win = torch.hann_window(n_fft, dtype=torch.float64)

    def power(a):
        a = torch.as_tensor(np.asarray(a, np.float64)).reshape(-1, a.shape[-1])
        return torch.stft(a, n_fft, min(hop, n_fft // 4), window=win, return_complex=True).abs().pow(2)

    ref, est = power(reference), power(x)
    floor = float(ref.max()) * 10 ** (-floor_db / 10) + 1e-30
    d = (10 * torch.log10(ref.clamp_min(floor)) - 10 * torch.log10(est.clamp_min(floor))).pow(2).mean(dim=-2).sqrt()
    return float(d.mean())


def audio_metrics(reference: np.ndarray, x: np.ndarray) -> dict[str, float]:
    return {"si_sdr": si_sdr(reference, x), "lsd": log_spectral_distance(reference, x)}
