"""Built-in audio: short synthetic sounds of five kinds, one clip per index, generated on the fly.

Kinds: harmonic tones with vibrato, frequency sweeps (chirps), plucked strings (Karplus-Strong),
percussive hits (decaying filtered noise with a pitched thump) and chords. Every parameter is drawn from
``numpy.random.default_rng([seed, index])``, so a clip depends only on its index and nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import signal
from torch.utils.data import Dataset

KINDS = ("tone", "chirp", "pluck", "percussion", "chord")


def _envelope(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Attack-decay-sustain-release envelope with random times, length ``n``."""
    attack = int(sr * rng.uniform(0.005, 0.05))
    release = int(sr * rng.uniform(0.02, 0.15))
    sustain = rng.uniform(0.4, 0.9)
    decay = int(sr * rng.uniform(0.02, 0.1))
    env = np.full(n, sustain, dtype=np.float64)
    a = min(attack, n)
    env[:a] = np.linspace(0, 1, a, endpoint=False)
    d = min(decay, max(n - a, 0))
    env[a:a + d] = np.linspace(1, sustain, d, endpoint=False)
    r = min(release, n)
    env[n - r:] *= np.linspace(1, 0, r)
    return env


def _harmonic(f0: np.ndarray | float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics of a (possibly time-varying) fundamental, kept below Nyquist."""
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    rolloff = rng.uniform(0.8, 2.0)
    out = np.zeros(n)
    for k in range(1, int(rng.integers(2, 9)) + 1):
        if k * f0.max() >= sr / 2:
            break
        out += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**rolloff
    return out


def tone(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    f0 = 110 * 2 ** rng.uniform(0, 3)  # 110-880 Hz
    t = np.arange(n) / sr
    rate, depth = rng.uniform(4, 7), rng.uniform(0.0, 0.02)  # vibrato in Hz and relative pitch deviation
    vibrato = 1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    start = int(rng.uniform(0, 0.3) * n)
    out = np.zeros(n)
    m = n - start
    out[start:] = _harmonic(f0 * vibrato[:m], m, sr, rng) * _envelope(m, sr, rng)
    return out


def chirp(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    hi = min(4000.0, 0.45 * sr)
    f_start, f_end = np.exp(rng.uniform(np.log(150), np.log(hi), 2))
    t = np.arange(n) / sr
    method = "logarithmic" if rng.random() < 0.5 else "linear"
    out = signal.chirp(t, f0=f_start, t1=t[-1] if n > 1 else 1.0, f1=f_end, method=method,
                       phi=rng.uniform(0, 360))
    return out * _envelope(n, sr, rng)


def pluck(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong: a noise burst fed back through a one-period delay with an averaging filter."""
    f0 = 82 * 2 ** rng.uniform(0, 3)  # 82-660 Hz
    period = max(2, int(round(sr / f0)))
    decay = rng.uniform(0.985, 0.999)
    burst = np.zeros(n)
    burst[:period] = rng.uniform(-1, 1, min(period, n))
    # y[t] = x[t] + decay/2 (y[t-P] + y[t-P-1]) as an IIR filter, so the loop runs in C
    a = np.zeros(period + 2)
    a[0], a[period], a[period + 1] = 1.0, -decay / 2, -decay / 2
    out = signal.lfilter([1.0], a, burst)
    start = int(rng.uniform(0, 0.3) * n)
    return np.concatenate([np.zeros(start), out[: n - start]])


def percussion(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    t = np.arange(n) / sr
    for _ in range(int(rng.integers(1, 5))):
        start = int(rng.uniform(0, 0.8) * n)
        m = n - start
        tau = rng.uniform(0.01, 0.15)
        env = np.exp(-t[:m] / tau)
        lo, hi = sorted(np.exp(rng.uniform(np.log(100), np.log(0.45 * sr), 2)))
        hi = max(hi, lo * 1.5)
        sos = signal.butter(2, [lo, min(hi, 0.49 * sr)], btype="bandpass", fs=sr, output="sos")
        hit = signal.sosfilt(sos, rng.standard_normal(m)) * env
        hit /= np.abs(hit).max() + 1e-9
        if rng.random() < 0.5:  # pitched thump of a drum: a sine falling in pitch
            f = rng.uniform(50, 150) * (1 + 3 * np.exp(-t[:m] / 0.02))
            thump = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t[:m] / (2 * tau))
            hit = hit * rng.uniform(0.2, 0.6) + thump
        out[start:] += hit * rng.uniform(0.3, 1.0)
    return out


def chord(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    root = 110 * 2 ** rng.uniform(0, 2)
    intervals = [0, 4, 7] if rng.random() < 0.5 else [0, 3, 7]  # major or minor triad in semitones
    if rng.random() < 0.5:
        intervals.append(rng.choice([10, 11, 12]))
    notes = sum(_harmonic(root * 2 ** (s / 12), n, sr, rng) for s in intervals)
    return notes * _envelope(n, sr, rng)


GENERATORS = {"tone": tone, "chirp": chirp, "pluck": pluck, "percussion": percussion, "chord": chord}


def render(index: int, length: int, sample_rate: int, channels: int = 1,
           seed: int = 0) -> tuple[np.ndarray, str]:
    """One clip ``(channels, length)`` with peak 1 (or silence), and its kind; deterministic per index."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    x = GENERATORS[kind](length, sample_rate, rng)
    x = x / (np.abs(x).max() + 1e-9)
    if channels == 2:  # constant-power pan to a random position
        theta = (rng.uniform(-0.8, 0.8) + 1) * np.pi / 4
        x = np.stack([x * np.cos(theta), x * np.sin(theta)])
    else:
        x = x[None]
    return x.astype(np.float32), kind


class SyntheticAudio(Dataset):
    """Built-in clips at the configured rate and length (see module docstring); ``transform`` normalises."""

    def __init__(self, size: int, length: int, sample_rate: int, channels: int = 1, seed: int = 0,
                 transform=None):
        self.size, self.length, self.sample_rate = size, length, sample_rate
        self.channels, self.seed, self.transform = channels, seed, transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        x = torch.from_numpy(render(i, self.length, self.sample_rate, self.channels, self.seed)[0])
        return {"x": self.transform(x) if self.transform else x}
