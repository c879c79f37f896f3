"""The geometry and intensity contract between a reconstruction prior and the k-space it is used on.

A slice model learns images on one grid: ``matrix`` (rows, columns), ``pixel_mm`` (row and column pixel
size) and ``axes``, the anatomical direction in which the row and the column index grow (letters of
RAS: ``R``/``L``, ``A``/``P``, ``S``/``I``; ``?`` when unknown). Training writes it into the checkpoint
(``checkpoint["geometry"]``); reconstruction reads the input's own geometry (NIfTI affine, or the ISMRMRD
header and fastMRI's display convention for HDF5) and either finds the transpose and flips that map one
onto the other, or refuses with a sentence naming both.

Intensity: the model sees ``2 m / s - 1`` with ``s = headroom * percentile`` of the magnitude of the
low-resolution image of the central ``center_fraction`` of k-space columns (``reference="calibration"``).
That centre is fully sampled in every fastMRI mask, so training and reconstruction compute ``s`` from the
same data: no guess from an aliased zero-filled image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import nibabel as nib
import numpy as np
import torch

from src.domains.mri.fft import fft2c, ifft2c
from src.errors import ProjectError

OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
PIXEL_TOLERANCE = 0.02  # relative pixel-size difference still taken as the same grid (header rounding)


class GeometryError(ProjectError, ValueError):
    """The input's grid cannot be mapped onto the model's by a transpose or flips."""


def default_intensity() -> dict:
    return {"reference": "calibration", "center_fraction": 0.04, "percentile": 99.5, "headroom": 1.25}


@dataclass(frozen=True)
class Geometry:
    matrix: tuple[int, int]
    pixel_mm: tuple[float, float]
    axes: tuple[str, str] = ("?", "?")
    intensity: dict = field(default_factory=default_intensity)
    # the files' own matrix when it was padded or cropped to ``matrix`` (a multiple of the U-Net's 8); None: same
    fitted_from: tuple[int, int] | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        out = {"matrix": list(self.matrix), "pixel_mm": list(self.pixel_mm), "axes": list(self.axes),
               "intensity": dict(d["intensity"])}
        if self.fitted_from is not None:
            out["fitted_from"] = list(self.fitted_from)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(matrix=tuple(int(v) for v in d["matrix"]), pixel_mm=tuple(float(v) for v in d["pixel_mm"]),
                   axes=tuple(str(v) for v in d.get("axes", ("?", "?"))),
                   intensity=dict(d.get("intensity") or default_intensity()),
                   fitted_from=tuple(int(v) for v in d["fitted_from"]) if d.get("fitted_from") else None)

    def describe(self) -> str:
        (h, w), (dh, dw) = self.matrix, self.pixel_mm
        axes = "" if "?" in self.axes else f", rows towards {self.axes[0]} and columns towards {self.axes[1]}"
        return f"{h}x{w} slices of {dh:.3g} x {dw:.3g} mm pixels{axes}"


def in_plane_from_affine(affine: np.ndarray, shape: tuple[int, int]) -> tuple[tuple[float, float], tuple[str, str]]:
    """Pixel size and axis letters of the first two array axes of an ``(H, W, slices)`` array."""
    a = np.asarray(affine, dtype=np.float64)
    pixel = tuple(float(np.linalg.norm(a[:3, i])) for i in range(2))
    codes = nib.orientations.aff2axcodes(a)
    return pixel, (str(codes[0]), str(codes[1]))


def geometry_from_affine(affine: np.ndarray, shape: tuple[int, int], intensity: dict | None = None) -> Geometry:
    pixel, axes = in_plane_from_affine(affine, shape)
    return Geometry(tuple(int(v) for v in shape), pixel, axes, intensity or default_intensity())


@dataclass(frozen=True)
class Reorientation:
    """How an input slice maps onto the model's grid: ``model = flips(transpose(input))``."""

    transpose: bool = False
    flip_rows: bool = False   # flip of the model's row axis (after the transpose)
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def describe(self) -> str:
        parts = (["transposed"] if self.transpose else []) + (["rows flipped"] if self.flip_rows else []) + (
            ["columns flipped"] if self.flip_cols else [])
        return ", ".join(parts) or "as is"

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Input-grid ``(..., H, W)`` tensor -> model grid."""
        if self.transpose:
            x = x.transpose(-2, -1)
        dims = [d for d, f in ((-2, self.flip_rows), (-1, self.flip_cols)) if f]
        return x.flip(dims) if dims else x

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Model grid -> input grid (the inverse of ``to_model``)."""
        dims = [d for d, f in ((-2, self.flip_rows), (-1, self.flip_cols)) if f]
        x = x.flip(dims) if dims else x
        return x.transpose(-2, -1) if self.transpose else x


def _same_size(a: float, b: float) -> bool:
    return abs(a - b) <= PIXEL_TOLERANCE * max(a, b)


def match(trained: Geometry, found: Geometry, what: str = "the input", same_matrix: bool = True) -> Reorientation:
    """The transpose/flips taking ``found`` onto ``trained``, or a GeometryError naming both geometries.

    ``same_matrix=False`` (reconstruction) accepts another matrix on the same pixel size and axes: a field of
    view cropped or extended by whole pixels, which a convolutional prior runs on unchanged (fastMRI knee
    k-space is 368 or 372 columns wide, for one)."""
    known = "?" not in trained.axes and "?" not in found.axes
    options = [False, True] if known else [False]
    for transpose in options:
        axes = found.axes[::-1] if transpose else found.axes
        matrix = found.matrix[::-1] if transpose else found.matrix
        pixel = found.pixel_mm[::-1] if transpose else found.pixel_mm
        if known and any(a not in (t, OPPOSITE.get(t)) for a, t in zip(axes, trained.axes)):
            continue
        if (same_matrix and tuple(matrix) != tuple(trained.matrix)) or not all(
                map(_same_size, pixel, trained.pixel_mm)):
            break
        flips = [known and a != t for a, t in zip(axes, trained.axes)]
        return Reorientation(transpose, *flips)
    raise GeometryError(
        f"The model was trained on {trained.describe()} but {what} has {found.describe()}; these differ by "
        f"more than a transpose or flip{'' if same_matrix else ' (another matrix is fine, another pixel size is not)'}"
        ", so reconstruct a scan acquired on the model's grid or train a prior "
        "on scans like this one (python -m src.train domain=mri experiment=recon_prior datamodule.path=DIR).")


# ---- intensity reference ------------------------------------------------------------------------------
def center_columns(width: int, center_fraction: float) -> tuple[int, int]:
    """fastMRI's fully sampled centre: ``round(W * fraction)`` columns starting at ``(W - n + 1) // 2``."""
    n = max(2, int(round(width * center_fraction)))
    lo = (width - n + 1) // 2
    return lo, lo + n


def calibration_reference(kspace: torch.Tensor, intensity: dict) -> float:
    """``s`` of the contract from k-space ``(S, H, W)`` or ``(S, C, H, W)`` (only its centre columns are used)."""
    k = torch.as_tensor(kspace)
    lo, hi = center_columns(k.shape[-1], float(intensity["center_fraction"]))
    low = torch.zeros_like(k)
    low[..., lo:hi] = k[..., lo:hi]
    img = ifft2c(low).abs()
    if img.ndim == 4:  # multi-coil: root-sum-of-squares
        img = img.pow(2).sum(1).sqrt()
    flat = img.flatten().float()
    stride = max(1, flat.numel() // 2**22)
    value = float(np.percentile(flat[::stride].numpy(), float(intensity["percentile"])))
    return float(intensity.get("headroom", 1.0)) * value if value > 0 else float(flat.max()) or 1.0


def image_reference(volume: np.ndarray | torch.Tensor, intensity: dict) -> float:
    """``s`` for a magnitude volume ``(S, H, W)``: that of its (zero-phase) k-space."""
    x = torch.as_tensor(np.asarray(volume, dtype=np.float32)).to(torch.complex64)
    return calibration_reference(fft2c(x), intensity)
