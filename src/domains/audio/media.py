"""How an audio sample is shown and measured: WAV files, W&B audio with spectrograms, and two distances.

Samples are ``(N, C, L)`` waveforms in [-1, 1]. Spectrograms come from torchaudio.

Metrics (no pretrained network, so any two runs can be compared):

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

import logging
from pathlib import Path

import numpy as np
import torch

from .env_check import import_torchaudio
from .metrics import frechet_distance

torchaudio = import_torchaudio()

log = logging.getLogger(__name__)

# anchor colours (dark blue -> purple -> orange -> pale yellow) for spectrogram images, interpolated linearly
_COLOURS = np.array([[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]],
                    dtype=np.float32)


def to_waveforms(samples: torch.Tensor) -> torch.Tensor:
    """``(N, C, L)`` float32 on CPU in [-1, 1]; non-finite values become 0 (with a warning)."""
    x = samples.detach().float().cpu()
    if not torch.isfinite(x).all():
        log.warning("Audio samples contain NaN/inf values; writing them as 0.")
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x.clamp(-1, 1)


LISTENING_PEAK = 10 ** (-1 / 20)  # -1 dBFS: headroom so that a loud sample never reaches full scale


def for_listening(waves: torch.Tensor, peak: float = LISTENING_PEAK) -> torch.Tensor:
    """Attenuate each clip whose peak exceeds ``peak`` (never amplify): files people play are not blasts."""
    level = waves.abs().amax(dim=tuple(range(1, waves.ndim)), keepdim=True)
    return torch.where(level > peak, waves * (peak / level.clamp_min(1e-12)), waves)


def log_mel(x: torch.Tensor, sample_rate: int, n_mels: int = 64, n_fft: int = 1024, hop_length: int = 256,
            floor: float = 1e-5) -> torch.Tensor:
    """``(..., L)`` -> natural-log mel power ``(..., n_mels, frames)``."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                               f_max=sample_rate / 2).to(x.device)
    return torch.log(mel(x.float()).clamp_min(floor))


def spectrogram_image(wave: torch.Tensor, sample_rate: int, n_mels: int = 64, top_db: float = 80.0,
                      scale: int = 4) -> np.ndarray:
    """One waveform ``(C, L)`` -> log-mel image ``(H, W, 3)`` uint8, low frequencies at the bottom."""
    n_fft = min(512, 2 ** int(np.log2(max(wave.shape[-1], 16))))
    db = log_mel(wave.mean(0), sample_rate, n_mels, n_fft, n_fft // 4) * (10 / np.log(10))
    db = db.clamp_min(db.max() - top_db)
    level = ((db - db.min()) / (db.max() - db.min()).clamp_min(1e-6)).flip(0).numpy()
    pos = level * (len(_COLOURS) - 1)
    i = np.clip(pos.astype(int), 0, len(_COLOURS) - 2)
    frac = (pos - i)[..., None]
    rgb = _COLOURS[i] * (1 - frac) + _COLOURS[i + 1] * frac
    return np.repeat(np.repeat(rgb.round().astype(np.uint8), scale, 0), scale, 1)


class AudioMedia:
    """WAV files (16-bit PCM at ``sample_rate``) on disk; W&B audio players plus a spectrogram per sample."""

    extension = ".wav"

    def __init__(self, sample_rate: int, subtype: str = "PCM_16", n_mels: int = 64, **_):
        self.sample_rate, self.subtype, self.n_mels = int(sample_rate), subtype, n_mels

    def save(self, samples: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
        import soundfile as sf

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, wave in enumerate(for_listening(to_waveforms(samples))):
            p = out_dir / f"{prefix}_{i:05d}.wav"
            sf.write(p, wave.T.numpy(), self.sample_rate, subtype=self.subtype)
            paths.append(p)
        return paths

    def to_wandb(self, samples: torch.Tensor, key: str = "samples") -> dict:
        import wandb

        waves = for_listening(to_waveforms(samples))
        audio, spectrograms = [], []
        for i, wave in enumerate(waves):
            data = wave[0].numpy() if wave.shape[0] == 1 else wave.T.numpy()
            audio.append(wandb.Audio(data, sample_rate=self.sample_rate, caption=f"EMA sample {i}"))
            spectrograms.append(wandb.Image(spectrogram_image(wave, self.sample_rate, self.n_mels),
                                            caption=f"EMA sample {i}: log-mel spectrogram"))
        return {f"{key}/audio": audio, f"{key}/spectrogram": spectrograms}


class AudioMetrics:
    """``metrics(generated, real)`` -> ``mrstft``, ``frechet_mel`` (``mrstft_paired``): see the module doc."""

    def __init__(self, sample_rate: int, fft_sizes: tuple[int, ...] = (256, 512, 1024), n_mels: int = 64,
                 paired: bool = False, **_):
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
