"""Finding MRI volumes and checking their headers before any voxel is decoded.

``datamodule.path`` may be a NIfTI file, a folder (searched recursively for ``.nii``/``.nii.gz`` files and
for folders of DICOM files, one series per folder) or an MSD/Decathlon-style datalist JSON. Each volume
becomes an item ``{"image": path, "reader": "nifti" | "dicom", "stamp": ...}`` for the MONAI pipeline.

Header checks are cheap (no pixel data) and catch what would otherwise fail deep inside MONAI: 2D or 4D
files, unreadable or inconsistent DICOM series, bad voxel sizes, mixed spacings. Messages name the file
(locally only: they never go to W&B) and never quote header fields such as patient names or dates.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from src.errors import DataError
from src.fileio import MAX_VALUES_ENV, NIFTI_SUFFIXES, is_nifti, max_input_values, nifti_suffix  # noqa: F401 - shards.py and data.py import them here

log = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}


class HeaderError(Exception):
    """One volume cannot be used; the message says why (the caller adds the file name)."""


def _stamp(path: Path) -> str:
    """Size and modification time: part of the disk-cache key, so an edited file is decoded again."""
    st = path.stat()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        newest = max((p.stat().st_mtime_ns for p in files), default=0)
        return f"{len(files)}:{sum(p.stat().st_size for p in files)}:{newest}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def item(path: Path, reader: str) -> dict:
    return {"image": str(path), "reader": reader, "stamp": _stamp(path)}


def _dicom_candidates(files: list[Path]) -> list[Path]:
    from pydicom.misc import is_dicom  # optional heavy dependency: pydicom (DICOM folders only)

    out = []
    for f in files:
        if f.suffix.lower() in (".dcm", ".dicom", ".ima"):
            out.append(f)
        elif f.suffix == "" and not f.name.startswith("."):
            try:
                if is_dicom(f):
                    out.append(f)
            except OSError:
                continue
    return out


def scan_folder(root: Path) -> list[dict]:
    """NIfTI files and DICOM series (one per folder) under ``root``, in a stable order."""
    items = [item(p, "nifti") for p in sorted(root.rglob("*")) if p.is_file() and is_nifti(p)]
    folders = sorted({root, *(p for p in root.rglob("*") if p.is_dir())})
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not is_nifti(p))
        if _dicom_candidates(files):
            items.append(item(folder, "dicom"))
    return items


def load_datalist(path: Path, key: str) -> list[dict]:
    """Items of one list (``training``, ``validation``, ...) of an MSD/Decathlon datalist, via MONAI."""
    from monai.data import load_decathlon_datalist  # optional heavy dependency: MONAI (datalists only)

    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"Datalist {path} could not be read as JSON ({e}); fix the file.") from None
    if not isinstance(content, dict) or key not in content:
        keys = ", ".join(sorted(content)) if isinstance(content, dict) else "none"
        raise DataError(f"Datalist {path} has no '{key}' list (it has: {keys}); set datamodule.datalist_key.")
    try:
        entries = load_decathlon_datalist(str(path), is_segmentation=False, data_list_key=key)
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(
            f"Datalist {path} list '{key}' is malformed ({e}); each entry needs an 'image'."
        ) from None
    items = []
    for i, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(image, str):
            raise DataError(
                f"Datalist {path} entry {i} of '{key}' has no single 'image' path; "
                "give one file or DICOM folder per entry."
            )
        p = Path(image)
        if not p.exists():
            raise DataError(f"Datalist {path} entry {i} of '{key}' points to {p}, which does not exist.")
        items.append(item(p, "dicom" if p.is_dir() else "nifti"))
    return items


def discover(
    path: str | Path, datalist_key: str = "training", datalist_val_key: str = "validation"
) -> tuple[list[dict], list[dict] | None]:
    """Training items and, when a datalist names them, validation items."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(
            f"datamodule.path={root} does not exist; pass a folder of NIfTI files or DICOM series, "
            "a datalist .json, or leave datamodule.path unset to train on built-in phantoms."
        )
    if root.is_file() and root.suffix.lower() == ".json":
        val = None
        with open(root) as f:
            try:
                has_val = datalist_val_key in json.load(f)
            except ValueError:  # not JSON or not UTF-8: load_datalist below says so
                has_val = False
        if has_val:
            val = load_datalist(root, datalist_val_key)
        return load_datalist(root, datalist_key), val
    if root.is_file():
        if not is_nifti(root):
            raise DataError(f"datamodule.path={root} is neither a NIfTI file, a folder nor a datalist .json.")
        return [item(root, "nifti")], None
    items = scan_folder(root)
    if not items:
        raise DataError(
            f"No NIfTI files ({', '.join(NIFTI_SUFFIXES)}) or DICOM series found under {root}; "
            "check datamodule.path."
        )
    return items, None


# ---- header checks ---------------------------------------------------------------------------------


def nifti_header(path: str, select_channel: int | None) -> tuple[float, ...]:
    """Voxel spacing (mm) of a NIfTI volume, after checking it is 3D (or 4D with a channel chosen)."""
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except (ImageFileError, OSError, EOFError, ValueError) as e:
        raise HeaderError(f"could not be read as NIfTI ({type(e).__name__}: {e})") from None
    while len(shape) > 3 and shape[-1] == 1:  # trailing singleton dimensions carry no data
        shape = shape[:-1]
    _check_shape(shape, select_channel)
    if math.prod(shape) > max_input_values():
        raise HeaderError(f"claims {math.prod(shape):,} voxels (shape {shape}), more than the {max_input_values():,} "
                          f"one volume may hold (raise {MAX_VALUES_ENV} if it is real)")
    return _check_spacing(zooms[:3])


def _check_shape(shape: tuple[int, ...], select_channel: int | None) -> None:
    if any(n == 0 for n in shape):
        raise HeaderError(f"is empty (shape {shape})")
    spatial = shape[:3]
    if len(shape) < 3 or min(spatial) < 2:
        raise HeaderError(f"is 2D (shape {shape}), but a 3D volume is expected")
    if len(shape) > 4:
        raise HeaderError(f"has {len(shape)} dimensions (shape {shape}); expected a 3D volume")
    if len(shape) == 4:
        if select_channel is None:
            raise HeaderError(
                f"is 4D with {shape[3]} volumes (shape {shape}); set datamodule.select_channel "
                "to the index of the one to train on"
            )
        if not 0 <= select_channel < shape[3]:
            raise HeaderError(
                f"has {shape[3]} volumes, so datamodule.select_channel={select_channel} is out of range"
            )


def _check_spacing(spacing) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) < 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise HeaderError(f"has an invalid voxel size {spacing} mm")
    return spacing


def dicom_header(folder: str) -> tuple[float, ...]:
    """Voxel spacing (mm) of a DICOM series folder, after checking the slices form one regular 3D volume."""
    import pydicom  # optional heavy dependency: pydicom (DICOM folders only)
    from pydicom.errors import InvalidDicomError  # optional heavy dependency: pydicom

    files = _dicom_candidates(sorted(p for p in Path(folder).iterdir() if p.is_file()))
    slices, readable, unreadable = [], [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size=1024)  # pixel data stays on disk
            if "PixelData" not in ds:
                raise InvalidDicomError("no pixel data")
            slices.append(ds)
            readable.append(f)
        except (InvalidDicomError, OSError, EOFError, ValueError, AttributeError) as e:
            unreadable.append((f.name, type(e).__name__))
    if unreadable:
        name, why = unreadable[0]
        raise HeaderError(
            f"has {len(unreadable)} of {len(files)} files that are not readable DICOM images "
            f"(e.g. {name}: {why})"
        )
    if len(slices) < 2:
        raise HeaderError("holds a single DICOM image (2D), but a 3D series is expected")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise HeaderError(f"holds {len(series)} DICOM series; put each series in its own folder")
    for tag in ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if any(tag not in ds for ds in slices):
            raise HeaderError(f"has slices without {tag}, so the volume cannot be assembled")
    fields = [_slice_fields(ds, f.name) for ds, f in zip(slices, readable)]
    if len({fl["size"] for fl in fields}) > 1:
        raise HeaderError("mixes slices of different sizes")
    pixel = {tuple(round(v, 4) for v in fl["PixelSpacing"]) for fl in fields}
    if len(pixel) > 1:
        raise HeaderError(f"mixes pixel spacings {sorted(pixel)} mm")
    orient = {tuple(round(v, 3) for v in fl["ImageOrientationPatient"]) for fl in fields}
    if len(orient) > 1:
        raise HeaderError("mixes slice orientations")
    row, col = np.array(next(iter(orient))[:3]), np.array(next(iter(orient))[3:])
    normal = np.cross(row, col)
    ordered = sorted(fields, key=lambda fl: fl["InstanceNumber"])
    pos = np.array([float(np.dot(normal, fl["ImagePositionPatient"])) for fl in ordered])
    gaps = np.abs(np.diff(pos))
    if gaps.min() <= 1e-4:
        raise HeaderError("has two slices at the same position")
    if gaps.max() > 1.1 * gaps.min():
        raise HeaderError(f"has uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm)")
    ps = next(iter(pixel))
    # MONAI's PydicomReader puts columns on the first axis (swap_ij), rows on the second, slices on the third
    return _check_spacing((ps[1], ps[0], float(gaps.mean())))


# the numbers each slice must carry, with how many values each holds (None: one whole number)
SLICE_FIELDS = {"InstanceNumber": None, "ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}


def _slice_fields(ds, name: str) -> dict:
    """The geometry of one DICOM slice as numbers; a malformed field (text in a position, a 3-value orientation,
    a non-integer instance number) is a HeaderError naming the file and the field, never a traceback."""
    out = {}
    try:
        out["size"] = (int(ds.Rows), int(ds.Columns))
    except (TypeError, ValueError, AttributeError):
        raise HeaderError(f"has a slice ({name}) without a valid Rows/Columns size") from None
    for tag, count in SLICE_FIELDS.items():
        try:
            raw = ds[tag].value if tag in ds else None
            if count is None:
                number = float(raw)
                if not number.is_integer():
                    raise ValueError
                out[tag] = int(number)
            else:
                values = [float(v) for v in (raw if isinstance(raw, (list, tuple)) or hasattr(raw, "__len__")
                                             and not isinstance(raw, (str, bytes)) else [raw])]
                if len(values) != count or not np.isfinite(values).all():
                    raise ValueError
                out[tag] = values
        except (TypeError, ValueError, OverflowError, KeyError, AttributeError):
            expected = "a whole number" if count is None else f"{count} numbers"
            raise HeaderError(f"has a slice ({name}) whose {tag} is not {expected}, so the volume cannot be "
                              "assembled") from None
    return out


def check_headers(
    items: list[dict], select_channel: int | None, counter, native_axes: list[int]
) -> list[dict]:
    """Items whose header passes, each with its ``spacing``; the rest go to ``counter`` (BadInputCounter).

    ``native_axes`` are the axes not resampled (``datamodule.spacing`` entries that are null): volumes whose
    spacing there differs from the most common one are skipped, since they could not be stacked.
    """
    good = []
    for it in items:
        try:
            if it["reader"] == "nifti":
                it["spacing"] = nifti_header(it["image"], select_channel)
            else:
                it["spacing"] = dicom_header(it["image"])
            good.append(it)
        except HeaderError as e:
            counter.add(it["image"], str(e))
    if native_axes and good:
        key = [tuple(round(it["spacing"][a], 2) for a in native_axes) for it in good]
        common, _ = Counter(key).most_common(1)[0]
        kept = []
        for it, k in zip(good, key):
            if k == common:
                kept.append(it)
            else:
                counter.add(
                    it["image"],
                    f"has voxel size {k} mm on axes {native_axes}, while most volumes have "
                    f"{common} mm; set datamodule.spacing to resample every volume",
                )
        good = kept
    return good
