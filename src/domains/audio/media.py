"""How an audio sample is shown: WAV files, and W&B audio players with spectrograms.

Samples are ``(N, C, L)`` waveforms in [-1, 1]. Spectrograms come from torchaudio.

Metrics are in ``metrics.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from .mel import log_mel

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

    def __init__(self, sample_rate: int, subtype: str = "PCM_16", n_mels: int = 64):
        self.sample_rate, self.subtype, self.n_mels = int(sample_rate), subtype, n_mels

    def save(self, samples: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, wave in enumerate(for_listening(to_waveforms(samples))):
            p = out_dir / f"{prefix}_{i:05d}.wav"
            sf.write(p, wave.T.numpy(), self.sample_rate, subtype=self.subtype)
            paths.append(p)
        return paths

    def save_grid(self, samples: torch.Tensor, per_row: int, path: Path, pad: int = 2) -> Path:
        """One PNG of log-mel spectrograms, ``per_row`` samples per row (``src.sample label=all``: a row per
        class), low frequencies at the bottom of each tile."""
        tiles = [spectrogram_image(w, self.sample_rate, self.n_mels) for w in to_waveforms(samples)]
        h, w = tiles[0].shape[:2]
        rows = -(-len(tiles) // per_row)
        grid = np.zeros((rows * (h + pad) + pad, per_row * (w + pad) + pad, 3), dtype=np.uint8)
        for i, tile in enumerate(tiles):
            r, c = divmod(i, per_row)
            grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tile
        Image.fromarray(grid).save(path)
        return path

    def to_wandb(self, samples: torch.Tensor, key: str = "samples", classes: list[str] | None = None,
                 row_kind: str = "class") -> dict:
        """A player and a spectrogram per clip; ``classes`` (each clip's class caption, or its prompt with
        ``row_kind="prompt"``) joins their captions."""
        import wandb  # optional heavy dependency: wandb (only when logging to W&B)

        waves = for_listening(to_waveforms(samples))
        audio, spectrograms = [], []
        for i, wave in enumerate(waves):
            data = wave[0].numpy() if wave.shape[0] == 1 else wave.T.numpy()
            name = f"EMA sample {i}" + (f", {row_kind} {classes[i]}" if classes else "")
            audio.append(wandb.Audio(data, sample_rate=self.sample_rate, caption=name))
            spectrograms.append(wandb.Image(spectrogram_image(wave, self.sample_rate, self.n_mels),
                                            caption=f"{name}: log-mel spectrogram"))
        return {f"{key}/audio": audio, f"{key}/spectrogram": spectrograms}
