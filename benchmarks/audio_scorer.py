"""The scorer of the latent-audio study: a small classifier over log-mel features, trained on real clips.

Features: the clip's 40-band log-mel spectrogram (n_fft 512, hop 128 at 16 kHz), normalised per clip (mean 0),
average-pooled to 16 time segments (640 values). Classifier: scikit-learn's MLPClassifier (one hidden layer
of 64 ReLU units), trained on the real clips and on copies shifted by up to +-80 ms and scaled in level, so
that a sample that is a little early, late or quiet is still judged on its content. Its hidden layer is the
feature space of the Frechet distance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from scipy import linalg
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

RATE = 16000
MEL = torchaudio.transforms.MelSpectrogram(RATE, n_fft=512, hop_length=128, n_mels=40)


def features(waves: np.ndarray, segments: int = 16) -> np.ndarray:
    x = torch.from_numpy(np.asarray(waves, dtype=np.float32))
    m = torch.log(MEL(x).clamp_min(1e-6))  # (N, 40, frames)
    m = m - m.mean(dim=(1, 2), keepdim=True)
    m = torch.nn.functional.adaptive_avg_pool1d(m, segments)
    return m.reshape(len(m), -1).numpy()


def read_folder(folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every clip of DIR/<class>/*.wav: waveforms, labels, and each clip's group (source and variant)."""
    waves, labels, groups = [], [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).glob("*.wav")):
            waves.append(sf.read(f, dtype="float32")[0])
            labels.append(c)
            groups.append(f.stem)
    return np.stack(waves), np.array(labels), groups


def split_real(groups: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Scorer-training and held-out clips: variants 1 and 4 of every source held out (a third)."""
    held = np.array([g.rsplit("_", 1)[1] in ("1", "4") for g in groups])
    return np.nonzero(~held)[0], np.nonzero(held)[0]


def augment(waves: np.ndarray, labels: np.ndarray, copies: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    out, lab = [waves], [labels]
    for _ in range(copies):
        shifts = rng.integers(-RATE * 8 // 100, RATE * 8 // 100, len(waves))
        gains = 10 ** (rng.uniform(-12, 0, len(waves)) / 20)
        out.append(np.stack([np.roll(w, s) * g for w, s, g in zip(waves, shifts, gains)]))
        lab.append(labels)
    return np.concatenate(out), np.concatenate(lab)


class Scorer:
    def __init__(self, num_classes: int, seed: int = 0):
        self.num_classes = num_classes
        self.scaler = StandardScaler()
        self.mlp = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=400, random_state=seed)

    def fit(self, waves: np.ndarray, labels: np.ndarray) -> Scorer:
        w, y = augment(waves, labels)
        f = self.scaler.fit_transform(features(w))
        self.mlp.fit(f, y)
        return self

    def predict(self, waves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(N, K)`` and hidden features ``(N, 64)``."""
        f = self.scaler.transform(features(waves))
        hidden = np.maximum(f @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0)
        return self.mlp.predict_proba(f), hidden


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (as FID / FAD)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
