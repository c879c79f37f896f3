"""Data preparation and the one scorer every recipe of ``benchmarks.peers`` is judged by.

Image (the image-quality study's scorer, docs/studies/image_quality.md, on any folder): every image at the
benchmark's resolution and channels, a fixed stratified held-out split; an MLP classifier and a 16-D PCA fitted
on the train split; generated images are scored by the classifier's mean max-probability and the Frechet
distance to the held-out images in the PCA space.

Audio: clips of the benchmark's length cut from every file; the Frechet distance between Gaussians fitted to
the 64-band log-mel frames of generated and held-out clips (``frechet_mel`` of src/domains/audio/metrics.py,
the audio study's scorer) and a log-mel classifier (logistic regression on each clip's per-band mean and
standard deviation) whose mean max-probability says whether a clip sounds like one of the real classes.

Classes are the data folder's first-level subfolders (files directly in it: one class; for audio with one
class, each file is its own class, so the classifier asks "which of the real sounds is this").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from benchmarks.image_quality import class_entropy, frechet_distance, split
from src.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga")
PCA_DIMS = 16


def labelled_files(data: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Every file under ``data`` with one of ``extensions``, and its class (first-level subfolder, else '.')."""
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    return files, [p.relative_to(data).parts[0] if len(p.relative_to(data).parts) > 1 else "." for p in files]


def held_out_count(labels: np.ndarray, wanted: int) -> int:
    """``wanted`` held-out items, at most a sixth of the data, at least one per class."""
    return int(min(max(wanted, len(set(labels))), max(len(labels) // 6, len(set(labels)))))


def write_digits(folder: Path, res: int = 16) -> None:
    """scikit-learn's 1,797 real digits as ``folder/<digit>/dNNNN.png`` (the default image data)."""
    from PIL import Image

    from benchmarks.image_quality import digit_images

    imgs, y = digit_images(res)
    for i, (im, label) in enumerate(zip(imgs, y)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / str(label) / f"d{i:04d}.png")


# ---- image ------------------------------------------------------------------------------------------
class ImageData:
    """The folder's images as flat [0, 1] arrays at ``resolution`` x ``channels``, split once."""

    def __init__(self, data: Path, resolution: int, channels: int, held_out: int = 300):
        from src.domains.image.data import open_image, to_tensor

        self.files, names = labelled_files(data, IMAGE_EXTENSIONS)
        if len(self.files) < 12:
            raise ConfigError(f"--data {data} holds {len(self.files)} images; the benchmark needs at least 12 "
                              "(class subfolders of png/jpg files), or pass an empty folder for the digits.")
        self.classes = sorted(set(names))
        self.y = np.array([self.classes.index(n) for n in names])
        x = torch.stack([to_tensor(open_image(p), resolution, channels, flip=False) for p in self.files])
        self.x = to_unit_flat(x)
        self.train, self.test = split(self.y, held_out_count(self.y, held_out))
        self.shape = (channels, resolution, resolution)

    def write_train(self, folder: Path) -> Path:
        """The train split's files copied to ``folder/<class>/`` (what every recipe trains on)."""
        for i in self.train:
            dest = folder / self.classes[self.y[i]] / f"{i:05d}{self.files[i].suffix.lower()}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.files[i], dest)
        return folder


def to_unit_flat(x: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> ``(N, C*H*W)`` in [0, 1], quantised to 8 bits as a PNG would be."""
    u8 = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    return u8.reshape(len(u8), -1).numpy().astype(np.float64) / 255.0


class Scorer:
    """What the image and audio scorers share: the reference row."""

    def reference(self) -> dict:
        """Real train items (as many as the held-out set) scored like samples: the best a recipe can do."""
        d = self.data
        pick = np.random.default_rng(0).choice(d.train, min(len(d.test), len(d.train)), replace=False)
        return self.score(d.x[pick])


class ImageScorer(Scorer):
    def __init__(self, data: ImageData, seed: int = 0):
        from sklearn.decomposition import PCA
        from sklearn.neural_network import MLPClassifier

        xt, yt = data.x[data.train], data.y[data.train]
        self.clf = None
        if len(data.classes) > 1:
            self.clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1.0, max_iter=500, random_state=seed)
            self.clf.fit(xt, yt)
        self.pca = PCA(n_components=min(PCA_DIMS, len(xt) - 1, xt.shape[1]), random_state=seed).fit(xt)
        f = self.pca.transform(data.x[data.test])
        self.mu, self.cov = f.mean(0), np.cov(f, rowvar=False)
        self.data = data

    def score(self, x: np.ndarray) -> dict:
        f = self.pca.transform(x)
        out = {"n": int(len(x)), "frechet": frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov)}
        if self.clf is not None:
            p = self.clf.predict_proba(x)
            out.update(max_prob=float(p.max(1).mean()), class_entropy=class_entropy(p.argmax(1), len(p[0])))
        return out

    def samples(self, x: np.ndarray) -> np.ndarray:
        return to_unit_flat(torch.from_numpy(x))


# ---- audio ------------------------------------------------------------------------------------------
class AudioData:
    """Clips of ``length`` samples at ``sample_rate`` (mono, peak-normalised) from every file, split once."""

    def __init__(self, data: Path, sample_rate: int, length: int, held_out: int = 60, max_clips_per_file: int = 40):
        import soundfile as sf

        from src.domains.audio.data import normalize
        from src.domains.audio.mel import torchaudio

        files, names = labelled_files(data, AUDIO_EXTENSIONS)
        if not files:
            raise ConfigError(f"--data {data} holds no audio files (wav/flac/ogg); pass a folder of sounds, e.g. "
                              "/usr/share/sounds/alsa after apt-get install alsa-utils.")
        if len(set(names)) == 1:
            names = [p.stem for p in files]  # one folder: each file is a class of its own
        self.classes = sorted(set(names))
        clips, labels = [], []
        for path, name in zip(files, names):
            try:
                w, rate = sf.read(path, dtype="float32", always_2d=True)
            except (RuntimeError, sf.LibsndfileError) as e:
                raise ConfigError(f"{path} cannot be read as audio ({e}); remove it from --data.") from None
            w = torch.from_numpy(w.T.copy()).mean(0, keepdim=True)
            if rate != sample_rate:
                w = torchaudio.functional.resample(w, rate, sample_rate)
            n = max(1, min(max_clips_per_file, w.shape[-1] // length))
            for k in range(n):
                c = w[:, k * length:(k + 1) * length]
                c = torch.nn.functional.pad(c, (0, length - c.shape[-1]))
                clips.append(normalize(c, "peak", sample_rate))
                labels.append(self.classes.index(name))
        self.x, self.y = torch.stack(clips), np.array(labels)
        if len(self.x) < 6:
            raise ConfigError(f"--data {data} gives {len(self.x)} clips of {length} samples; the benchmark needs at "
                              "least 6: add sounds or shorten the clips.")
        n_test = held_out_count(self.y, held_out)
        counts = np.bincount(self.y)
        if counts.min() >= 2 and n_test >= len(counts):
            self.train, self.test = split(self.y, n_test)
        else:  # a class with one clip cannot be stratified
            perm = np.random.default_rng(0).permutation(len(self.y))
            self.train, self.test = np.sort(perm[n_test:]), np.sort(perm[:n_test])
        self.sample_rate, self.length = sample_rate, length

    def write_train(self, folder: Path) -> Path:
        import soundfile as sf

        for i in self.train:
            dest = folder / self.classes[self.y[i]] / f"c{i:05d}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dest, self.x[i, 0].numpy(), self.sample_rate, subtype="FLOAT")
        return folder


class AudioScorer(Scorer):
    def __init__(self, data: AudioData):
        from sklearn.linear_model import LogisticRegression

        from src.domains.audio.metrics import AudioMetrics

        self.data, self.metrics = data, AudioMetrics(data.sample_rate)
        self.clf = None
        if len(set(data.y[data.train])) > 1:
            self.clf = LogisticRegression(max_iter=2000, C=1.0).fit(self.features(data.x[data.train]),
                                                                   data.y[data.train])

    def features(self, x: torch.Tensor) -> np.ndarray:
        from src.domains.audio.mel import log_mel

        m = log_mel(x.mean(1), self.data.sample_rate, 64)  # (N, mels, frames)
        return torch.cat([m.mean(-1), m.std(-1)], 1).double().numpy()

    def score(self, x: torch.Tensor) -> dict:
        x = torch.as_tensor(x).float()
        out = {"n": int(len(x)), "frechet": self.metrics(x, self.data.x[self.data.test])["frechet_mel"]}
        if self.clf is not None:
            p = self.clf.predict_proba(self.features(x))
            out.update(max_prob=float(p.max(1).mean()))
        return out

    def samples(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x)
