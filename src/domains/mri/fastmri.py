"""MRI scans as files: fastMRI-style HDF5 k-space, and NIfTI volumes as stacks of slices.

Inside the code a volume is ``(slices, H, W)``; on disk (NIfTI) it is ``(H, W, slices)``. Phase encoding
(the undersampled direction) is ``W``: the last axis of fastMRI k-space, the second axis of a NIfTI volume.
HDF5 k-space carries no patient position, so its affine is fastMRI's display convention (``display_affine``).
Files are opened through ``src.fileio``; every problem with one is a ``DataError`` naming it and what to do.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.errors import DataError
from src.fileio import check_finite, existing, is_nifti, open_hdf5, read_dataset, read_nifti, write_nifti

REFERENCE_KEYS = ("reconstruction_rss", "reconstruction_esc", "reconstruction", "target")
ONE_FILE = " (.h5 k-space or a .nii/.nii.gz volume)"


@dataclass
class KspaceScan:
    kspace: np.ndarray               # (slices, [coils,] H, W) complex
    mask: np.ndarray | None          # as stored in the file (validated later against the k-space)
    affine: np.ndarray               # for (H, W, slices) arrays
    notes: list[str] = field(default_factory=list)


def display_affine(voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """Affine for ``(H, W, slices)`` arrays: column index to the right, row index downwards (as fastMRI
    displays images), slice index upwards. HDF5 k-space carries no patient position, so the origin is 0."""
    dh, dw, dz = voxel_mm
    return np.array([[0, dw, 0, 0], [-dh, 0, 0, 0], [0, 0, dz, 0], [0, 0, 0, 1]], dtype=np.float64)


class ImpossibleHeader(ValueError):
    """An ISMRMRD header that parses but describes no possible scan (a zero matrix, a NaN field of view)."""


def voxel_size_from_ismrmrd(header: bytes | str | None, h: int,
                            w: int) -> tuple[tuple[float, float, float], str]:
    """Voxel size (mm) from the ISMRMRD header stored by fastMRI: encoded field of view over matrix size.
    A header that is missing or cannot be parsed gives 1 mm with a note; one whose field of view is not a
    positive finite number, or whose matrix size is zero or negative, raises ``ImpossibleHeader``."""
    if header is None:
        return (1.0, 1.0, 1.0), "no ismrmrd_header in the file: voxel size unknown, 1 mm assumed"
    try:
        root = ET.fromstring(header if isinstance(header, str) else bytes(header).decode("utf-8", "replace"))

        def find(path):
            node = root
            for tag in path:
                node = next(c for c in node if c.tag.split("}")[-1] == tag)
            return node

        def values(path):
            return {c.tag.split("}")[-1]: float(c.text) for c in find(path)}

        fov = values(["encoding", "encodedSpace", "fieldOfView_mm"])
        mat = values(["encoding", "encodedSpace", "matrixSize"])
        fov_xyz, mat_xyz = (fov["x"], fov["y"], fov["z"]), (mat.get("x", h), mat.get("y", w), mat.get("z", 1.0))
    except (ET.ParseError, StopIteration, KeyError, ValueError, TypeError):
        return (1.0, 1.0, 1.0), "unreadable ismrmrd_header: voxel size unknown, 1 mm assumed"
    if not all(np.isfinite(v) and v > 0 for v in fov_xyz):
        raise ImpossibleHeader(f"field of view {fov_xyz} mm (each must be a positive number)")
    if not all(np.isfinite(v) and v >= 1 for v in mat_xyz):
        raise ImpossibleHeader(f"matrix size {mat_xyz} (each must be at least 1)")
    voxel = (fov_xyz[0] / mat_xyz[0], fov_xyz[1] / mat_xyz[1], fov_xyz[2] / mat_xyz[2])
    return voxel, "voxel size from the ISMRMRD header (encoded field of view)"


def read_kspace_h5(path: str | Path) -> KspaceScan:
    p = existing(path, "Input", ONE_FILE)
    hint = ("pass a fastMRI-style .h5 file with a 'kspace' dataset, or a NIfTI magnitude volume with "
            "--simulate")
    with open_hdf5(p, "Input", hint) as f:
        if "kspace" not in f:
            keys = ", ".join(sorted(f.keys())) or "nothing"
            raise DataError(f"Input {p} has no 'kspace' dataset (it has: {keys}); the raw k-space must be "
                            "stored under the key 'kspace', as in fastMRI files.")
        ds = f["kspace"]
        if getattr(ds, "dtype", None) is not None and ds.dtype.kind in "biuf":
            extra = (" If the last axis holds (real, imaginary), store kspace[..., 0] + 1j * kspace[..., 1]"
                     " instead." if ds.shape and ds.shape[-1] == 2 else "")
            raise DataError(f"'kspace' in {p} is real-valued ({ds.dtype}); k-space must be complex (e.g. "
                            f"complex64) as acquired by the scanner.{extra} For a magnitude image use a NIfTI "
                            "file with --simulate.")
        # complex64 or complex128 only (not bytes, not complex256), shape and size checked before reading
        kspace = read_dataset(f, "kspace", p, "Input", kinds="c", max_itemsize=16, ranks=(2, 3, 4))
        mask = read_dataset(f, "mask", p, "Input", ranks=(1, 2, 3)) if "mask" in f else None
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
    check_finite(kspace, p, "'kspace' in input", "samples")
    if mask is not None:
        check_finite(mask, p, "'mask' in input")
        if not np.isin(mask, (0, 1)).all():
            raise DataError(f"'mask' in input {p} holds values other than 0 and 1; store 1 for each sampled "
                            "k-space column and 0 for each skipped one.")
    if kspace.ndim == 2:
        kspace = kspace[None]
    try:
        voxel, note = voxel_size_from_ismrmrd(header, kspace.shape[-2], kspace.shape[-1])
    except ImpossibleHeader as e:
        raise DataError(f"'ismrmrd_header' in input {p} has an impossible {e}; fix the header or delete it "
                        "(1 mm voxels are then assumed).") from None
    return KspaceScan(kspace=kspace, mask=mask, affine=display_affine(voxel), notes=[note])


def read_slices(path: str | Path, what: str = "Input") -> tuple[np.ndarray, np.ndarray, object]:
    """NIfTI magnitude volume -> ``(slices, H, W)`` float32 (a 2D file is one slice), its affine and header."""
    arr, affine, header = read_nifti(path, what)
    arr = np.squeeze(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DataError(f"{what} {Path(path).expanduser()} has shape {arr.shape}; expected a 3D magnitude volume "
                        "or a 2D slice.")
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), affine, header


def write_slices(volume: np.ndarray, affine: np.ndarray, path: str | Path, header=None) -> Path:
    """Write ``(slices, H, W)`` as an ``(H, W, slices)`` float32 NIfTI, atomically (``src.fileio.write_nifti``)."""
    arr = np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(1, 2, 0))
    return write_nifti(arr, affine, path, header)


def read_reference(path: str | Path) -> np.ndarray:
    """Reference volume ``(slices, H, W)``: NIfTI (same axes as the output) or fastMRI HDF5 (target keys)."""
    p = existing(path, "Reference", ONE_FILE)
    if is_nifti(p):
        return read_slices(p, what="Reference")[0]
    with open_hdf5(p, "Reference", "pass a NIfTI (.nii/.nii.gz) or a fastMRI .h5 file") as f:
        key = next((k for k in REFERENCE_KEYS if k in f), None)
        if key is None:
            raise DataError(f"Reference {p} has none of the keys {', '.join(REFERENCE_KEYS)}; store the "
                            "fully sampled image under 'reconstruction_rss' (fastMRI) or pass a NIfTI file.")
        ref = read_dataset(f, key, p, "Reference", kinds="biufc", max_itemsize=16, ranks=(2, 3))
    ref = check_finite(np.abs(ref).astype(np.float32), p, f"'{key}' in reference")
    return ref[None] if ref.ndim == 2 else ref
