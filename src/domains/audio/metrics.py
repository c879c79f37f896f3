"""Sample quality for audio with no pretrained network, so any two runs can be compared.

* ``mrstft``: multi-resolution STFT distance between the *average* magnitude spectra of the generated and
  the real clips (spectral convergence + mean absolute log-magnitude difference, averaged over three STFT
  sizes). 0 when the two sets have the same long-term spectrum; it grows when timbre or spectral balance
  differs (too much hiss, missing harmonics). With ``paired`` (vocoder training, where sample i was
  drawn from real clip i's mel) ``mrstft_paired`` is the usual clip-by-clip version (Yamamoto et al. 2020).
* ``frechet_mel``: Frechet distance between Gaussians fitted to the log-mel frames of the two sets (FAD with
  log-mel features instead of VGGish embeddings). 0 for equal statistics; it grows when the generated
  frames differ in level, spectral shape or variety from the real ones.
"""

from __future__ import annotations

import numpy as np
import torch

from src.domains.common import frechet_distance

from .media import to_waveforms
from .mel import log_mel, torchaudio


class AudioMetrics:
    """``metrics(generated, real)`` -> ``mrstft``, ``frechet_mel`` (``mrstft_paired``): see the module doc."""

    def __init__(self, sample_rate: int, fft_sizes: tuple[int, ...] = (256, 512, 1024), n_mels: int = 64,
                 paired: bool = False):
        self.sample_rate, self.fft_sizes = int(sample_rate), tuple(fft_sizes)
        self.n_mels, self.paired = n_mels, paired

    def _magnitudes(self, x: torch.Tensor, n_fft: int) -> torch.Tensor:
        spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=n_fft // 4, power=1.0)
        # floor at -80 dB below a full-scale sine (peak n_fft / 4 with a Hann window), so near-empty bins
        # of clean sounds do not dominate the log term
        return spec(x).clamp_min(1e-4 * n_fft / 4)  # (N, freq, frames)

    @staticmethod
    def _stft_distance(a: torch.Tensor, b: torch.Tensor) -> float:
        """Spectral convergence of ``b`` to reference ``a`` plus mean absolute log-magnitude difference."""
        sc = torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(1e-7)
        return float(sc + (a.log() - b.log()).abs().mean())

    def __call__(self, generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        gen, ref = to_waveforms(generated).mean(1), to_waveforms(real).mean(1)  # mono (N, L)
        out: dict[str, float] = {}
        set_level, paired = [], []
        for n_fft in self.fft_sizes:
            g, r = self._magnitudes(gen, n_fft), self._magnitudes(ref, n_fft)
            set_level.append(self._stft_distance(r.mean((0, 2)), g.mean((0, 2))))
            if self.paired and g.shape == r.shape:
                paired.append(self._stft_distance(r, g))
        out["mrstft"] = float(np.mean(set_level))
        if paired:
            out["mrstft_paired"] = float(np.mean(paired))
        feats = [log_mel(w, self.sample_rate, self.n_mels).transpose(-1, -2).reshape(-1, self.n_mels).double()
                 for w in (gen, ref)]
        (mu_g, cov_g), (mu_r, cov_r) = [(f.mean(0), torch.cov(f.T)) for f in feats]
        out["frechet_mel"] = frechet_distance(mu_g, cov_g, mu_r, cov_r)
        return out
