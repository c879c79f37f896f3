"""Reading scans and writing results: fastMRI-style HDF5 k-space, NIfTI volumes, metrics JSON.

Inside the code a volume is ``(slices, H, W)``; on disk (NIfTI) it is ``(H, W, slices)``. Phase encoding
(the undersampled direction) is ``W``: the last axis of fastMRI k-space, the second axis of a NIfTI volume.
Every problem with an input file is a ``DataError`` naming the file and what to do.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamodules.base import DataError
from src.domains.mri.io import is_nifti, nifti_suffix
from src.fileio import atomic_write, atomic_write_text

REFERENCE_KEYS = ("reconstruction_rss", "reconstruction_esc", "reconstruction", "target")


@dataclass
class KspaceScan:
    kspace: np.ndarray               # (slices, [coils,] H, W) complex
    mask: np.ndarray | None          # as stored in the file (validated later against the k-space)
    affine: np.ndarray               # for (H, W, slices) arrays
    notes: list[str] = field(default_factory=list)


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {p} does not exist; check the path.")
    if p.is_dir():
        raise DataError(f"{what} {p} is a folder; pass one file (.h5 k-space or a .nii/.nii.gz volume).")
    return p


def display_affine(voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """Affine for ``(H, W, slices)`` arrays: column index to the right, row index downwards (as fastMRI
    displays images), slice index upwards. HDF5 k-space carries no patient position, so the origin is 0."""
    dh, dw, dz = voxel_mm
    return np.array([[0, dw, 0, 0], [-dh, 0, 0, 0], [0, 0, dz, 0], [0, 0, 0, 1]], dtype=np.float64)


def voxel_size_from_ismrmrd(header: bytes | str | None, h: int,
                            w: int) -> tuple[tuple[float, float, float], str]:
    """Voxel size (mm) from the ISMRMRD header stored by fastMRI: encoded field of view over matrix size."""
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
        dz = fov["z"] / max(mat.get("z", 1.0), 1.0)
        voxel = (fov["x"] / mat.get("x", h), fov["y"] / mat.get("y", w), dz)
        return voxel, "voxel size from the ISMRMRD header (encoded field of view)"
    except (ET.ParseError, StopIteration, KeyError, ValueError, TypeError):
        return (1.0, 1.0, 1.0), "unreadable ismrmrd_header: voxel size unknown, 1 mm assumed"


def read_kspace_h5(path: str | Path) -> KspaceScan:
    import h5py

    p = _existing(path, "Input")
    if not h5py.is_hdf5(p):
        raise DataError(f"Input {p} is not an HDF5 file; pass a fastMRI-style .h5 file with a 'kspace' "
                        "dataset, or a NIfTI magnitude volume with --simulate.")
    with h5py.File(p, "r") as f:  # read-only: the input is never modified
        if "kspace" not in f:
            keys = ", ".join(sorted(f.keys())) or "nothing"
            raise DataError(f"Input {p} has no 'kspace' dataset (it has: {keys}); the raw k-space must be "
                            "stored under the key 'kspace', as in fastMRI files.")
        ds = f["kspace"]
        if ds.dtype.kind != "c":
            hint = (" If the last axis holds (real, imaginary), store kspace[..., 0] + 1j * kspace[..., 1]"
                    " instead." if ds.shape and ds.shape[-1] == 2 else "")
            raise DataError(f"'kspace' in {p} is real-valued ({ds.dtype}); k-space must be complex (e.g. "
                            f"complex64) as acquired by the scanner.{hint} For a magnitude image use a NIfTI "
                            "file with --simulate.")
        kspace = np.asarray(ds[()])
        mask = np.asarray(f["mask"][()]) if "mask" in f else None
        header = f["ismrmrd_header"][()] if "ismrmrd_header" in f else None
    if kspace.ndim not in (2, 3, 4):
        raise DataError(f"'kspace' in {p} has shape {kspace.shape}; expected (slices, H, W) for single-coil "
                        "or (slices, coils, H, W) for multi-coil data.")
    if kspace.ndim == 2:
        kspace = kspace[None]
    voxel, note = voxel_size_from_ismrmrd(header, kspace.shape[-2], kspace.shape[-1])
    return KspaceScan(kspace=kspace, mask=mask, affine=display_affine(voxel), notes=[note])


def read_nifti(path: str | Path, what: str = "Input") -> tuple[np.ndarray, np.ndarray, object]:
    """NIfTI magnitude volume -> ``(slices, H, W)`` float32, its affine and header."""
    import nibabel as nib

    p = _existing(path, what)
    try:
        img = nib.load(str(p))
        arr = np.asarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - any nibabel failure means the file is not a usable NIfTI
        raise DataError(f"{what} {p} could not be read as NIfTI ({type(e).__name__}: {e}).") from None
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    arr = np.squeeze(arr.astype(np.float32))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DataError(f"{what} {p} has shape {arr.shape}; expected a 3D magnitude volume or a 2D slice.")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} {p} contains NaN or infinite values; fix the file first.")
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), img.affine, img.header


def read_reference(path: str | Path) -> np.ndarray:
    """Reference volume ``(slices, H, W)``: NIfTI (same axes as the output) or fastMRI HDF5 (target keys)."""
    p = _existing(path, "Reference")
    if is_nifti(p):
        return read_nifti(p, what="Reference")[0]
    import h5py

    if not h5py.is_hdf5(p):
        raise DataError(f"Reference {p} is neither NIfTI (.nii/.nii.gz) nor HDF5; pass one of those.")
    with h5py.File(p, "r") as f:
        key = next((k for k in REFERENCE_KEYS if k in f), None)
        if key is None:
            raise DataError(f"Reference {p} has none of the keys {', '.join(REFERENCE_KEYS)}; store the "
                            "fully sampled image under 'reconstruction_rss' (fastMRI) or pass a NIfTI file.")
        ref = np.abs(np.asarray(f[key][()])).astype(np.float32)
    return ref[None] if ref.ndim == 2 else ref


def output_stem(out: str | Path) -> Path:
    p = Path(out).expanduser()
    suffix = nifti_suffix(p)
    if suffix:
        return p.with_name(p.name[: -len(suffix)])
    raise DataError(f"Output {p} must end in .nii.gz or .nii (a NIfTI volume).")


def write_nifti(volume: np.ndarray, affine: np.ndarray, path: str | Path, header=None) -> Path:
    """Write ``(slices, H, W)`` as an ``(H, W, slices)`` float32 NIfTI, atomically."""
    import nibabel as nib

    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(1, 2, 0))
    img = nib.Nifti1Image(arr, affine, header=header.copy() if header is not None else None)
    img.set_data_dtype(np.float32)
    # outputs are patient data: keep the geometry, never the input's free-text fields (names, notes)
    for text_field in ("descrip", "aux_file", "intent_name", "db_name"):
        if text_field in img.header:
            img.header[text_field] = b""
    # nibabel picks the format (gzip or not) by the suffix, so the temporary file keeps it
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)), suffix=nifti_suffix(path))
    return path


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
