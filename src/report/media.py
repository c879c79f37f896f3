"""Samples on disk as page elements: image grids, audio players with a mel spectrogram, MRI slices."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import soundfile as sf
import torch
from nibabel.filebasedimages import ImageFileError
from PIL import Image

from ..env_check import import_torchaudio
from .plots import plt, png

# what a damaged sample file raises in the readers below (Pillow, soundfile, nibabel); the page skips and notes it
UNREADABLE = (OSError, ValueError, EOFError, RuntimeError, sf.LibsndfileError, ImageFileError,
              Image.DecompressionBombError)


def check_image(path: Path) -> bool:
    """Decode ``path`` whole (a truncated PNG fails here, not in the grid)."""
    with Image.open(path) as img:
        img.load()
    return True


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_grid(files: list[Path], max_items: int = 16) -> bytes:
    """The sample PNGs of one step tiled into one PNG (at their own resolution; the page scales it up)."""
    images = [Image.open(f).convert("RGB") for f in files[:max_items]]
    w, h = max(i.width for i in images), max(i.height for i in images)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    pad = 2
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid.paste(img, (pad + c * (w + pad), pad + r * (h + pad)))
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def mel_spectrogram(wav: Path, n_mels: int = 64) -> bytes:
    """Log-mel spectrogram of a WAV file (torchaudio), drawn with matplotlib; low frequencies at the bottom."""
    torchaudio = import_torchaudio()
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(1))
    n_fft = min(1024, 2 ** int(np.log2(max(len(wave), 32))))
    mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels)(wave)
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    db = db.clamp_min(db.max() - 80).numpy()
    fig, ax = plt.subplots(figsize=(3.0, 1.6))
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(wave) / rate, 0, n_mels))
    ax.set_xlabel("s", fontsize=7)
    ax.set_ylabel("mel band", fontsize=7)
    ax.tick_params(labelsize=6)
    return png(fig)


def mri_slices(nifti: Path) -> bytes:
    """Three orthogonal middle slices (sagittal, coronal, axial) of a NIfTI volume; one slice for a 2D file."""
    vol = np.abs(np.asarray(nib.load(nifti).dataobj)).astype(np.float32)
    vol = vol.reshape(vol.shape[:3]) if vol.ndim > 3 else vol
    if vol.ndim == 3 and min(vol.shape) > 1:
        d0, d1, d2 = vol.shape
        views = {"sagittal": vol[d0 // 2].T, "coronal": vol[:, d1 // 2].T, "axial": vol[:, :, d2 // 2].T}
    else:
        views = {"slice": np.squeeze(vol).T}
    hi = float(np.percentile(vol, 99.5)) or 1.0
    fig, axes = plt.subplots(1, len(views), figsize=(1.6 * len(views), 1.8), squeeze=False)
    for ax, (name, view) in zip(axes.flat, views.items()):
        ax.imshow(view, origin="lower", cmap="gray", vmin=0, vmax=hi)  # RAS: superior/anterior up
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    return png(fig)


def pick_steps(steps: list[int], most: int) -> list[int]:
    """At most ``most`` steps, evenly spread, always keeping the first and the last."""
    steps = sorted(steps)
    if len(steps) <= most:
        return steps
    if most == 1:
        return steps[-1:]
    idx = sorted({round(i * (len(steps) - 1) / (most - 1)) for i in range(most)})
    return [steps[i] for i in idx]
