"""MRI samples as NIfTI files (3D volumes or 2D slices) and tri-planar pictures for W&B.

Samples are ``(N, C, *spatial)`` in [-1, 1] under the MRI intensity convention (``transforms.py``):
C=1 is magnitude, written as ``(x + 1) / 2`` (a fraction of the reference intensity); C=2 is (real, imag),
written as complex64. The affine has the configured voxel size (RAS, mm) with the volume centred on the
origin, so any NIfTI viewer shows the right physical size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from src.domains.common import image_grid
from src.errors import ConfigError

from .transforms import sample_magnitude


def to_intensity(sample: torch.Tensor) -> np.ndarray:
    """One ``(C, *spatial)`` sample -> magnitude in [0, 1] (C=1) or complex (C=2), in reference units."""
    x = sample.detach().float().cpu().clamp(-1, 1)
    if x.shape[0] == 2:
        return (x[0] + 1j * x[1]).numpy().astype(np.complex64)
    return ((x[0] + 1) / 2).numpy().astype(np.float32)


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = -(np.array(shape, dtype=np.float64) - 1) / 2 * np.array(spacing)
    return affine


def triplanar(volume: torch.Tensor) -> np.ndarray:
    """Middle sagittal, coronal and axial slices of a RAS ``(D0, D1, D2)`` volume side by side, superior or
    anterior up, as one ``(H, W)`` array."""
    d0, d1, d2 = volume.shape
    views = [volume[d0 // 2].T.flip(0), volume[:, d1 // 2].T.flip(0), volume[:, :, d2 // 2].T.flip(0)]
    h = max(v.shape[0] for v in views)
    padded = [torch.nn.functional.pad(v, (0, 0, 0, h - v.shape[0])) for v in views]
    return torch.cat(padded, dim=1).numpy()


class MRIMedia:
    extension = ".nii.gz"

    def __init__(
        self, mode: str = "volume", spacing: Sequence[float | None] | None = None, slice_axis: int = 2
    ):
        if mode not in ("volume", "slice"):
            raise ConfigError(f"media.mode must be volume or slice, got '{mode}'.")
        self.mode, self.slice_axis = mode, slice_axis
        self.spacing = [float(s) if s else 1.0 for s in (spacing or [1.0, 1.0, 1.0])]

    def _voxel_size(self, ndim: int) -> list[float]:
        if ndim == 3:
            return self.spacing
        in_plane = [s for a, s in enumerate(self.spacing) if a != self.slice_axis]
        return [*in_plane, self.spacing[self.slice_axis]]  # a 2D slice: third entry is the slice thickness

    def save(self, samples: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, s in enumerate(samples):
            arr = to_intensity(s)
            size = self._voxel_size(arr.ndim)
            affine = centred_affine([*arr.shape, 1][:3], size)
            img = nib.Nifti1Image(arr, affine)
            img.set_qform(affine, code=1)  # scanner-anchored, so viewers and nibabel agree on the geometry
            img.set_sform(affine, code=1)
            img.header.set_xyzt_units("mm")
            p = out_dir / f"{prefix}_{i:05d}{self.extension}"
            nib.save(img, p)
            paths.append(p)
        return paths

    def pictures(self, samples: torch.Tensor) -> np.ndarray:
        """A uint8 ``(H, W, 3)`` picture: one tri-planar row per volume, or a grid of slices."""
        mag = sample_magnitude(samples)[:, 0]
        if mag.ndim == 4:
            rows = [triplanar(v) for v in mag]
            sep = np.zeros((2, rows[0].shape[1]), dtype=np.float32)
            pic = np.concatenate([r for row in rows for r in (row, sep)][:-1])
            return image_grid(torch.from_numpy(pic)[None, None] * 2 - 1, nrow=1)
        views = mag.transpose(1, 2).flip(1)[:, None]  # anterior (or superior) up
        return image_grid(views * 2 - 1)

    def to_wandb(self, samples: torch.Tensor, key: str = "samples") -> dict:
        import wandb  # optional heavy dependency: wandb (only when logging to W&B)

        what = "tri-planar middle slices" if self.mode == "volume" else "slices"
        return {key: wandb.Image(self.pictures(samples), caption=f"{len(samples)} EMA samples, {what}")}
