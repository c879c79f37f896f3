"""Scans and files in and out of the detector's model space, per domain.

MRI follows the training convention (docs/design/mri.md): with ``s`` the ``intensity_percentile`` of ``|voxel|``,
``m -> clip(2 m / s - 1, -1, 1)``. A slice model screens the volume slice by slice along
``datamodule.slice_axis``; a volume model screens it whole (tiled when larger than its training shape).
Maps come back in the input's own intensity units (``|difference| * s / 2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.checkpoint import CheckpointError
from src.domains.mri.data import INTENSITY_SCALING
from src.errors import ConfigError, DataError
from src.fileio import kind_of, read_audio, read_image, read_nifti, write_image, write_nifti, write_npy

MAP_KINDS = {"mri": ("nifti", "npy"), "image": ("image", "npy"), "audio": ("npy",)}


@dataclass
class Scan:
    x: torch.Tensor                  # (N, C, *spatial) in model space
    scale: float                     # input units per model unit of difference
    foreground: np.ndarray           # bool, the input's shape: where the per-volume score is taken
    affine: np.ndarray | None = None
    slice_axis: int | None = None    # slice models: the axis the slices were taken along
    shape: tuple[int, ...] = ()


def load(path, prior) -> Scan:
    domain, data = prior.domain, prior.data
    kind = kind_of(path)
    expected = {"mri": "nifti", "image": "image", "audio": "audio"}[domain]
    if kind != expected:
        article = "an" if expected[0] in "aeiou" else "a"
        raise ConfigError(f"--input {path} is not {article} {expected} file but checkpoint {prior.name} is a {domain} "
                          "model; "
                          f"pass a {'.nii.gz' if domain == 'mri' else '.png' if domain == 'image' else '.wav'} file.")
    if domain == "mri":
        return _load_mri(path, prior, data)
    if domain == "image":
        img = read_image(path, prior.channels)
        x = torch.from_numpy(img * 2 - 1)[None]
        return Scan(x, 0.5, np.ones(img.shape[1:], bool), shape=img.shape[1:])
    wave, _ = read_audio(path)
    return Scan(torch.from_numpy(wave)[:, None], 1.0, np.ones(wave.shape, bool), shape=wave.shape)


def _load_mri(path, prior, data) -> Scan:
    scaling = data.get("intensity_scaling", INTENSITY_SCALING)
    if scaling != INTENSITY_SCALING:
        raise CheckpointError(f"Checkpoint {prior.name} scales intensities by '{scaling}', which this tool cannot "
                              f"reproduce; it needs the '{INTENSITY_SCALING}' convention of the mri domain.")
    if prior.channels != 1:
        raise CheckpointError(f"Checkpoint {prior.name} models {prior.channels}-channel (complex) data; anomaly maps "
                              "need a magnitude model (datamodule.channels=1).")
    volume, affine, _ = read_nifti(path)
    mag = np.abs(volume)
    s = float(np.percentile(mag, float(data.get("intensity_percentile", 99.5))))
    if s <= 0:
        raise DataError(f"Input {path} is empty (its {data.get('intensity_percentile', 99.5)}th intensity percentile "
                        "is 0); pass a volume with signal.")
    model = np.clip(2 * mag / s - 1, -1, 1).astype(np.float32)
    foreground = mag > float(data.get("foreground_threshold", 0.1)) * s
    spatial = len(prior.spatial)
    if spatial == 2:
        if volume.ndim == 2:
            return Scan(torch.from_numpy(model)[None, None], s / 2, foreground, affine, None, volume.shape)
        axis = int(data.get("slice_axis", 2))
        slices = np.moveaxis(model, axis, 0)
        return Scan(torch.from_numpy(np.ascontiguousarray(slices))[:, None], s / 2, foreground, affine, axis,
                    volume.shape)
    if volume.ndim != 3:
        raise DataError(f"Input {path} is a 2D image but checkpoint {prior.name} is a 3D volume model; pass a 3D "
                        "volume or a checkpoint trained with datamodule.mode=slice.")
    return Scan(torch.from_numpy(model)[None, None], s / 2, foreground, affine, None, volume.shape)


def to_input_layout(scan: Scan, m: torch.Tensor) -> np.ndarray:
    """A map ``(N, *spatial)`` from the detector back to the input's array layout and units."""
    arr = m.cpu().numpy() * scan.scale
    if scan.slice_axis is not None:
        return np.moveaxis(arr, 0, scan.slice_axis)
    return arr.reshape(scan.shape)


def check_output(path, domain: str) -> None:
    """Refuse a map file name of the wrong kind before any work starts."""
    if kind_of(path) not in MAP_KINDS[domain]:
        exts = {"nifti": ".nii.gz", "npy": ".npy", "image": ".png"}
        raise ConfigError(f"--output {path}: a {domain} anomaly map is written as "
                          f"{' or '.join(exts[k] for k in MAP_KINDS[domain])}; choose such a name.")


def write_map(path, domain: str, scan: Scan, arr: np.ndarray) -> Path:
    check_output(path, domain)
    kind = kind_of(path)
    if kind == "nifti":
        return write_nifti(arr, scan.affine, path)
    if kind == "image":
        peak = float(arr.max()) or 1.0
        return write_image((arr / peak)[None], path)
    return write_npy(arr, path)
