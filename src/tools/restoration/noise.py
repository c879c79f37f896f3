"""The std of white Gaussian noise in a signal, estimated from the signal alone.

Images: the median absolute finest-scale diagonal Haar detail / 0.6745 (Donoho & Johnstone 1994; scikit-image's
``estimate_sigma`` does this through PyWavelets, which is not a dependency). Sound: tones and harmonics fill few
frequency bins while white noise fills all of them evenly, so the noise power is a low quantile over frequency
bins of each bin's median power over time (median / ln 2 is the mean of the exponential law of a noise bin).
"""

from __future__ import annotations

import math

import torch


def estimate_noise_std(x: torch.Tensor, n_fft: int = 512, quantile: float = 0.25) -> float:
    """Noise std of ``(..., H, W)`` images (3+ dims with both sides > 1) or ``(..., L)`` recordings."""
    if x.ndim >= 3 and x.shape[-1] > 1 and x.shape[-2] > 1:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        v = x[..., :h, :w]
        d = (v[..., 0::2, 0::2] - v[..., 0::2, 1::2] - v[..., 1::2, 0::2] + v[..., 1::2, 1::2]) / 2
        return float(d.abs().flatten().median() / 0.6745)
    wave = x.reshape(-1, x.shape[-1]).double()
    n_fft = min(n_fft, 2 ** int(math.log2(max(wave.shape[-1] // 4, 16))))
    win = torch.hann_window(n_fft, dtype=torch.float64)
    power = torch.stft(wave, n_fft, n_fft // 4, window=win, return_complex=True).abs().pow(2)[:, 1:-1]
    per_bin = power.median(dim=-1).values / math.log(2)          # (channels, bins)
    noise_power = torch.quantile(per_bin.flatten(), quantile)
    return float((noise_power / win.pow(2).sum()).sqrt())
