"""Slices for a reconstruction prior, at the acquisition grid: fastMRI HDF5 files, NIfTI files, DICOM series.

``python -m src.train domain=mri experiment=recon_prior datamodule.path=DIR``. Nothing is resampled in
plane: every slice keeps its file's pixel size, is transposed/flipped onto one orientation when its axes
differ only so, and is centre-cropped or zero-padded to one matrix (``datamodule.shape``, or the most
common matrix of the files). Files on another pixel size are skipped and named (resampling would teach
the prior a grid no scanner acquired). The grid and the intensity reference (``src/domains/mri/geometry.py``) become
``self.geometry``, which training writes into every checkpoint for ``src.reconstruct`` to check.

What each file gives (the image ``src.reconstruct`` sees for that kind of file):

- fastMRI single-coil HDF5: ``|ifft2c(kspace)|`` at the k-space grid (the ``reconstruction_esc`` target
  when there is no ``kspace``); multi-coil: the root-sum-of-squares of the coil images (or
  ``reconstruction_rss``). Pixel size from ``ismrmrd_header``; axes by fastMRI's display convention
  (``src/domains/mri/fastmri.py: display_affine``).
- NIfTI / DICOM: array axes 0 and 1 in plane and slices along axis 2 (as ``src.reconstruct`` reads NIfTI);
  pixel size and axes from the affine.

HDF5 slices are read lazily (only the k-space centre is read at setup, for the intensity reference and the
foreground test), so a full fastMRI training folder needs no more memory than its file list.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.base import BadInputCounter, DataError, DiffusionDataModule, split_indices
from src.domains.mri.fastmri import display_affine, read_slices
from src.domains.mri.fft import ifft2c, rss
from src.domains.mri.geometry import (
    OPPOSITE,
    Geometry,
    GeometryError,
    Reorientation,
    calibration_reference,
    center_columns,
    default_intensity,
    geometry_from_affine,
    image_reference,
    match,
)
from src.domains.mri.io import HeaderError, dicom_header, scan_folder
from src.errors import fraction, one_of
from src.fileio import check_header

log = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
IMAGE_KEYS = {"singlecoil": ("reconstruction_esc",), "multicoil": ("reconstruction_rss",)}


@dataclass
class Volume:
    """One file: where its slices come from and how they map onto the common grid."""

    path: Path
    kind: str                 # "kspace" | "image" (HDF5 key) | "nifti" | "dicom"
    key: str | None           # HDF5 dataset
    geometry: Geometry        # the file's own grid
    slices: int
    reorient: Reorientation | None = None
    scale: float = 1.0
    keep: list[int] | None = None
    data: np.ndarray | None = None  # NIfTI/DICOM: the model-grid magnitude volume (S, H, W), float32


def ismrmrd_space(header, space: str, shape: tuple[int, int]) -> tuple[float, float] | None:
    """In-plane pixel size (mm) of ``encodedSpace`` or ``reconSpace`` in an ISMRMRD header, or None."""
    if header is None:
        return None
    try:
        root = ET.fromstring(header if isinstance(header, str) else bytes(header).decode("utf-8", "replace"))
        node = next(c for c in root.iter() if c.tag.split("}")[-1] == space)
        fov = {c.tag.split("}")[-1]: float(c.text) for f in node if f.tag.split("}")[-1] == "fieldOfView_mm"
               for c in f}
        mat = {c.tag.split("}")[-1]: float(c.text) for m in node if m.tag.split("}")[-1] == "matrixSize"
               for c in m}
        pair = (fov["x"], fov["y"]), (mat.get("x", shape[0]), mat.get("y", shape[1]))
    except (ET.ParseError, StopIteration, KeyError, ValueError, TypeError):
        return None
    (fx, fy), (mx, my) = pair
    if not all(np.isfinite(v) and v > 0 for v in (fx, fy)) or not all(np.isfinite(v) and v >= 1 for v in (mx, my)):
        raise DataError(f"has an impossible ismrmrd_header ({space} field of view {fx} x {fy} mm over a "
                        f"{mx} x {my} matrix); fix the header")
    return fx / mx, fy / my


def h5_affine(pixel: tuple[float, float]) -> np.ndarray:
    return display_affine((pixel[0], pixel[1], 1.0))


def probe_h5(path: Path, intensity: dict) -> Volume:
    try:
        return _probe_h5(path, intensity)
    except OSError as e:  # h5py's error for a damaged file
        raise DataError(f"{path} could not be read as HDF5 ({e}); replace the file.") from None


def _probe_h5(path: Path, intensity: dict) -> Volume:
    with h5py.File(path, "r") as f:
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
        if "kspace" in f and f["kspace"].dtype.kind == "c" and f["kspace"].ndim in (3, 4):
            shape = tuple(f["kspace"].shape)
            key, kind, space = "kspace", "kspace", "encodedSpace"
        else:
            key = next((k for k in (*IMAGE_KEYS["singlecoil"], *IMAGE_KEYS["multicoil"]) if k in f), None)
            if key is None:
                raise DataError(f"{path} has neither a complex 'kspace' nor a reconstruction_esc / "
                                "reconstruction_rss dataset; it is not a fastMRI training file.")
            shape, kind, space = tuple(f[key].shape), "image", "reconSpace"
        check_header(path, f"'{key}' in", shape, f[key].dtype, kinds="c" if kind == "kspace" else "biufc",
                     max_itemsize=16)
    hw = (int(shape[-2]), int(shape[-1]))
    try:
        pixel = ismrmrd_space(header, space, hw)
    except DataError as e:
        raise DataError(f"{path} {e}.") from None
    if pixel is None:
        raise DataError(f"{path} has no readable ismrmrd_header, so its pixel size is unknown; a prior needs "
                        "it to be checked at reconstruction (keep the header fastMRI ships).")
    geometry = geometry_from_affine(h5_affine(pixel), hw, intensity)
    return Volume(path, kind, key, geometry, int(shape[0]))


def load_image_volume(path: Path, reader: str) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude volume ``(S, H, W)`` of a NIfTI file or DICOM series and the affine of ``(H, W, S)``."""
    if reader == "nifti":
        volume, affine, _ = read_slices(path, what="Training file")
        return volume, np.asarray(affine)
    from monai.transforms import LoadImage  # optional heavy dependency: MONAI's DICOM reader (DICOM folders only)

    img = LoadImage(image_only=True, reader="PydicomReader")(str(path))
    arr = np.abs(np.asarray(img, dtype=np.float32))
    if arr.ndim != 3:
        raise DataError(f"DICOM series {path} has shape {arr.shape}; expected one 3D series per folder.")
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), np.asarray(img.affine)


def fit_to_multiple(matrix: Sequence[int], multiple: int, how: str) -> tuple[int, ...]:
    """Each size rounded up (``pad``) or down (``crop``, never below one ``multiple``) to a ``multiple``."""
    if how == "pad":
        return tuple(-(-int(n) // multiple) * multiple for n in matrix)
    return tuple(max(multiple, int(n) // multiple * multiple) for n in matrix)


def crop_or_pad(x: torch.Tensor, matrix: Sequence[int]) -> torch.Tensor:
    """Centre crop or zero-pad the last two axes to ``matrix`` (no interpolation)."""
    for axis, n in zip((-2, -1), matrix):
        size = x.shape[axis]
        if size > n:
            start = (size - n) // 2
            x = x.narrow(axis, start, n)
        elif size < n:
            before = (n - size) // 2
            pad = [0, 0, 0, 0]
            pad[(0 if axis == -1 else 2)], pad[(1 if axis == -1 else 3)] = before, n - size - before
            x = torch.nn.functional.pad(x, pad)
    return x


def h5_slices(vol: Volume, index) -> torch.Tensor:
    """Magnitude slices of an HDF5 file on its own grid, ``(n, H, W)``."""
    with h5py.File(vol.path, "r") as f:
        data = torch.as_tensor(np.asarray(f[vol.key][index]))
    if vol.kind == "image":
        return data.abs().float()
    img = ifft2c(data.to(torch.complex64))
    return (rss(img, coil_dim=1) if img.ndim == 4 else img.abs()).float()


class ReconSlices(Dataset):
    """``(volume, slice)`` pairs -> ``{"x": (1, H, W)}`` in [-1, 1] on the model grid.

    ``mirror_dim`` (-2 rows, -1 columns, None): the set holds every slice twice, as is and mirrored along
    that axis (the left-right one). ``affine_copies`` > 0 adds that many copies of every item, each rotated by
    up to ``degrees`` and scaled by up to ``scale`` (in millimetres, so non-square pixels stay right), drawn
    once per copy from a seeded generator. Fixed lists rather than random draws, so the data position of a
    resumed run needs no random state."""

    def __init__(self, volumes: list[Volume], index: list[tuple[int, int]], matrix: Sequence[int],
                 mirror_dim: int | None = None, affine_copies: int = 0, degrees: float = 5.0,
                 scale: float = 0.05, pixel_mm: Sequence[float] = (1.0, 1.0), seed: int = 0):
        self.volumes, self.matrix, self.mirror_dim = volumes, list(matrix), mirror_dim
        items = [(v, s, False) for v, s in index] + (
            [(v, s, True) for v, s in index] if mirror_dim is not None else [])
        self.index = [(*item, None) for item in items]
        rng = np.random.default_rng(seed)
        for _ in range(int(affine_copies)):
            self.index += [(*item, (float(rng.uniform(-degrees, degrees)), float(rng.uniform(-scale, scale))))
                           for item in items]
        self.pixel_mm = tuple(float(v) for v in pixel_mm)

    def __len__(self) -> int:
        return len(self.index)

    def warp(self, m: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
        """``m`` (H, W) rotated by ``degrees`` and zoomed by ``1 + scale`` about its centre (bilinear, zeros
        outside), the rotation taken in millimetres."""
        h, w = m.shape
        half = torch.tensor([w * self.pixel_mm[1], h * self.pixel_mm[0]], dtype=torch.float64) / 2
        a = np.deg2rad(degrees)
        rot = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=torch.float64) / (1 + scale)
        theta = (rot * half[None, :] / half[:, None]).float()  # normalised coords -> mm, rotate, back
        grid = F.affine_grid(torch.cat([theta, torch.zeros(2, 1)], 1)[None], [1, 1, h, w], align_corners=False)
        return F.grid_sample(m[None, None].float(), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)[0, 0]

    def __getitem__(self, i: int) -> dict:
        v, s, mirrored, warp = self.index[i]
        vol = self.volumes[v]
        if vol.data is not None:
            m = torch.from_numpy(vol.data[s])
        else:
            m = crop_or_pad(vol.reorient.to_model(h5_slices(vol, slice(s, s + 1))), self.matrix)[0]
        if mirrored:
            m = m.flip(self.mirror_dim)
        if warp is not None:
            m = self.warp(m, *warp)
        return {"x": (2 * m / vol.scale - 1).clamp(-1.0, 1.0)[None].float()}


def left_right_dim(axes: Sequence[str]) -> int | None:
    """The model-grid axis (-2 rows, -1 columns) that runs left-right, or None (unknown, or not in plane)."""
    for dim, letter in zip((-2, -1), axes):
        if letter in ("L", "R"):
            return dim
    return None


class ReconPriorDataModule(DiffusionDataModule):
    """The ``recon_prior`` preset's datamodule (``datamodule.grid=acquisition``)."""

    def __init__(self, path: str | None = None, shape: Sequence[int] | None = None, channels: int = 1,
                 mode: str = "slice", min_slice_foreground: float = 0.05, foreground_threshold: float = 0.1,
                 val_fraction: float = 0.1, max_bad_fraction: float = 0.05, intensity: dict | None = None,
                 random_flip: bool = False, affine_copies: int = 0, affine_degrees: float = 5.0,
                 affine_scale: float = 0.05, fit_matrix: str = "pad", **kw):
        super().__init__(**kw)
        if not path:
            raise DataError("experiment=recon_prior needs datamodule.path: a folder of fastMRI .h5 files, "
                            "NIfTI files or DICOM series (the prior learns their own grid).")
        if mode != "slice" or channels != 1:
            raise DataError("experiment=recon_prior trains 1-channel slice models: keep datamodule.mode=slice "
                            "and datamodule.channels=1.")
        if shape is not None and (len(shape) != 2 or any(int(n) % 8 for n in shape)):
            raise DataError(f"datamodule.shape must be null (the files' own matrix) or two multiples of 8, "
                            f"got {list(shape)}.")
        self.path, self.shape = Path(path).expanduser(), (None if shape is None else [int(n) for n in shape])
        one_of(fit_matrix, "datamodule.fit_matrix", ("pad", "crop"))
        self.fit_matrix = fit_matrix  # a files' matrix that is not a multiple of 8: zero-pad up, or crop down
        self.min_fg = fraction(min_slice_foreground, "datamodule.min_slice_foreground")
        self.fg_threshold = float(foreground_threshold)
        self.val_fraction = fraction(val_fraction, "datamodule.val_fraction")
        self.max_bad_fraction = fraction(max_bad_fraction, "datamodule.max_bad_fraction")
        self.intensity = {**default_intensity(), **(intensity or {})}
        self.random_flip = bool(random_flip)  # train on left-right mirrored copies too (ReconSlices)
        if int(affine_copies) < 0 or not 0 <= float(affine_degrees) <= 45 or not 0 <= float(affine_scale) < 0.5:
            raise DataError(f"datamodule.affine_copies must be >= 0 (got {affine_copies}), affine_degrees between 0 "
                            f"and 45 (got {affine_degrees}) and affine_scale between 0 and 0.5 (got {affine_scale}).")
        self.affine = {"affine_copies": int(affine_copies), "degrees": float(affine_degrees),
                       "scale": float(affine_scale)}
        self._volumes: list[Volume] | None = None
        self.geometry: Geometry | None = None

    # ---- discovery: headers only ------------------------------------------------------------------
    def _scan(self) -> list[Volume]:
        if self._volumes is not None:
            return self._volumes
        root = self.path
        if not root.exists():
            raise DataError(f"datamodule.path={root} does not exist; pass a folder of fastMRI .h5 files, NIfTI "
                            "files or DICOM series.")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        counter = BadInputCounter("file", self.max_bad_fraction)
        volumes: list[Volume] = []
        for p in files:
            if p.suffix.lower() in H5_SUFFIXES and h5py.is_hdf5(p):
                try:
                    volumes.append(probe_h5(p, self.intensity))
                except DataError as e:
                    counter.add(str(p), str(e))
        for it in ([] if root.is_file() else scan_folder(root)) + (
                [{"image": str(root), "reader": "nifti"}] if root.is_file() and root.name.endswith((".nii", ".nii.gz"))
                else []):
            try:
                if it["reader"] == "dicom":
                    dicom_header(it["image"])  # a malformed series is skipped before MONAI reads it
                data, affine = load_image_volume(Path(it["image"]), it["reader"])
            except (DataError, HeaderError) as e:
                counter.add(it["image"], str(e))
                continue
            g = geometry_from_affine(affine, data.shape[1:], self.intensity)
            volumes.append(Volume(Path(it["image"]), it["reader"], None, g, data.shape[0], data=data))
        if not volumes and counter.count:
            why = "; ".join(f"{Path(name).name}: {reason}" for name, reason in counter.bad[:3])
            raise DataError(f"Every one of the {counter.count} files found under datamodule.path={root} was skipped "
                            f"({why}); fix or replace them.")
        if not volumes:
            raise DataError(f"No fastMRI .h5 file, NIfTI file or DICOM series found under datamodule.path={root}.")
        self._volumes = self._common_grid(volumes, counter)
        return self._volumes

    def _common_grid(self, volumes: list[Volume], counter: BadInputCounter) -> list[Volume]:
        """The most common grid (matrix from datamodule.shape when set); others reoriented, cropped or skipped."""
        votes = Counter((v.geometry.axes, v.geometry.pixel_mm, v.geometry.matrix) for v in volumes)
        axes, pixel, matrix = votes.most_common(1)[0][0]
        matrix = tuple(self.shape) if self.shape else matrix
        fitted_from = None
        if any(n % 8 for n in matrix):  # the U-Net halves the size at each level: the next multiple of 8
            fitted_from, matrix = matrix, fit_to_multiple(matrix, 8, self.fit_matrix)
            log.info("The files' matrix is %dx%d, not a multiple of 8: %s to %dx%d (datamodule.fit_matrix=%s); "
                     "the checkpoints' geometry records both.", *fitted_from,
                     "zero-padded" if self.fit_matrix == "pad" else "centre-cropped", *matrix, self.fit_matrix)
        target = Geometry(tuple(matrix), tuple(pixel), tuple(axes), self.intensity, fitted_from=fitted_from)
        good = []
        for v in volumes:
            # the matrix is cropped or padded to, so compare the rest of the grid at the target matrix
            flipped = v.geometry.axes[::-1] != v.geometry.axes and _transposed(v.geometry, target)
            probe = Geometry(tuple(matrix[::-1]) if flipped else tuple(matrix), v.geometry.pixel_mm,
                             v.geometry.axes, self.intensity)
            try:
                v.reorient = match(target, probe, what=str(v.path))
            except GeometryError:
                counter.add(str(v.path), f"has {v.geometry.describe()}, not the common {target.describe()}, and "
                                         "is skipped (slices are never resampled in plane)")
                continue
            good.append(v)
        counter.check(len(volumes))
        if not good:
            raise DataError("No training file is on a common grid; see the warnings above.")
        self.geometry = target
        return good

    @property
    def data_shape(self) -> list[int]:
        self._scan()
        return [1, *self.geometry.matrix]

    # ---- setup ----------------------------------------------------------------------------------------
    def _prepare(self, vol: Volume) -> list[int]:
        """Intensity reference and usable slices of one volume (model grid)."""
        matrix = self.geometry.matrix
        if vol.data is not None:
            x = crop_or_pad(vol.reorient.to_model(torch.from_numpy(vol.data)), matrix).contiguous()
            vol.scale = image_reference(x, self.intensity)
            vol.data = x.numpy()
            low = x
        else:
            with h5py.File(vol.path, "r") as f:
                width = f[vol.key].shape[-1]
                if vol.kind == "kspace" and vol.geometry.matrix == matrix and vol.reorient.identity:
                    lo, hi = center_columns(width, float(self.intensity["center_fraction"]))
                    k = torch.zeros(f[vol.key].shape, dtype=torch.complex64)
                    k[..., lo:hi] = torch.as_tensor(np.asarray(f[vol.key][..., lo:hi]))
                    vol.scale = calibration_reference(k, self.intensity)
                    img = ifft2c(k)
                    low = rss(img, coil_dim=1) if img.ndim == 4 else img.abs()
                else:
                    low = crop_or_pad(vol.reorient.to_model(h5_slices(vol, slice(None))), matrix)
                    vol.scale = image_reference(low, self.intensity)
        share = (low > self.fg_threshold * vol.scale).float().flatten(1).mean(1)
        return [int(s) for s in torch.nonzero(share >= self.min_fg).flatten().tolist()]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        volumes = self._scan()
        index = {i: [(i, s) for s in self._prepare(v)] for i, v in enumerate(volumes)}
        train_ids, val_ids = split_indices(len(volumes), self.val_fraction, self.seed)
        train = [p for i in sorted(train_ids) for p in index[i]]
        val = [p for i in sorted(val_ids) for p in index[i]]
        if not train:
            raise DataError(f"No slice has more than datamodule.min_slice_foreground={self.min_fg} foreground; "
                            "lower it.")
        mirror = left_right_dim(self.geometry.axes) if self.random_flip else None
        if self.random_flip and mirror is None:
            log.info("datamodule.random_flip: no left-right axis in the slice plane (%s), so no mirrored copies.",
                     self.geometry.describe())
        self.train_set = ReconSlices(volumes, train, self.geometry.matrix, mirror, **self.affine,
                                     pixel_mm=self.geometry.pixel_mm, seed=self.seed)
        self.val_set = ReconSlices(volumes, val or train[: max(1, len(train) // 10)], self.geometry.matrix)
        log.info("Reconstruction prior data: %d train items (%d slices%s) and %d validation slices from %d files "
                 "on %s.", len(self.train_set), len(train), ", and mirrored left-right" if mirror is not None else "",
                 len(self.val_set), len(volumes), self.geometry.describe())


def _transposed(found: Geometry, target: Geometry) -> bool:
    """Whether ``found``'s axis letters match ``target``'s only after swapping rows and columns."""
    def same(a, t):
        return a == t or OPPOSITE.get(a) == t

    return "?" not in found.axes and not all(map(same, found.axes, target.axes)) and all(
        map(same, found.axes[::-1], target.axes))
