"""File I/O for the whole project: atomic writes, and the one reader and writer per format the tools use.

Every file is written whole or not at all: a temporary file in the same folder, fsynced, then renamed into
place. Tools read and write PNG/JPEG/TIFF images, WAV/FLAC/OGG sound, NIfTI volumes, HDF5 files and JSON
here, with one set of checks (each failure a ``DataError`` naming the file and what to do) and one rule for
NIfTI headers (geometry kept, free text dropped). Images are float32 ``(C, H, W)`` in [0, 1]; sound is
float32 ``(C, L)`` in the file's full scale; NIfTI arrays keep the file's own axis order.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from src.errors import DataError


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems and platforms cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path, suffix: str = "") -> Path:
    """``.NAME.tmp-PID`` beside ``path`` (``suffix`` appended for writers that choose a format by it);
    ``src.train`` removes such files left by a killed job."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """``write(tmp)`` into a temporary file, fsync it, rename it to ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# ---- the tools' files: one reader and writer per format, each failure a DataError naming the file ----------
# Pillow, soundfile, nibabel and h5py are imported where a format is read or written: most callers of this
# module (training, checkpoints) only write files atomically and need none of them.

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
NIFTI_SUFFIXES = (".nii.gz", ".nii")  # longest first: "a.nii.gz" is gzipped NIfTI, not ".gz"
HDF5_SUFFIXES = (".h5", ".hdf5")
# free-text NIfTI header fields: outputs are patient data, so they keep the geometry, never names or notes
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def nifti_suffix(path: str | Path) -> str | None:
    """``".nii.gz"`` or ``".nii"`` (as the name ends, case-insensitively), None for any other file."""
    name = Path(path).name.lower()
    return next((s for s in NIFTI_SUFFIXES if name.endswith(s)), None)


def is_nifti(path: str | Path) -> bool:
    return nifti_suffix(path) is not None


def kind_of(path: str | Path) -> str | None:
    """``"image"``, ``"audio"``, ``"nifti"``, ``"npy"`` or ``"hdf5"`` by the file name, None for anything else."""
    name = str(path).lower()
    for kind, exts in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS), ("nifti", NIFTI_SUFFIXES),
                       ("npy", (".npy",)), ("hdf5", HDF5_SUFFIXES)):
        if name.endswith(exts):
            return kind
    return None


def stem(path: str | Path) -> tuple[Path, str]:
    """``OUT`` split into (path without extension, extension); ``.nii.gz`` counts as one extension."""
    p = Path(path).expanduser()
    ext = nifti_suffix(p) or p.suffix
    return p.with_name(p.name[:len(p.name) - len(ext)] if ext else p.name), ext


def sibling(out: str | Path, tag: str, ext: str | None = None) -> Path:
    """``OUT.tag.ext`` beside ``OUT`` (the output's own extension unless ``ext``)."""
    base, own = stem(out)
    return base.with_name(f"{base.name}.{tag}{ext if ext is not None else own}")


def nifti_stem(out: str | Path) -> Path:
    """``OUT`` without its ``.nii.gz`` / ``.nii``; any other name is refused."""
    p = Path(out).expanduser()
    if not is_nifti(p):
        raise DataError(f"Output {p} must end in .nii.gz or .nii (a NIfTI volume).")
    return stem(p)[0]


def existing(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` when it is a file; else a DataError that says whether it is missing or a folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {p} does not exist; check the path.")
    if not p.is_file():
        raise DataError(f"{what} {p} is a folder, not a file; pass one file{hint}.")
    return p


def read_image(path: str | Path, channels: int, what: str = "Input") -> np.ndarray:
    """``(channels, H, W)`` float32 in [0, 1]; colour is converted to gray (or gray repeated) as the model needs."""
    from PIL import Image, UnidentifiedImageError  # optional heavy dependency: Pillow

    p = existing(path, what)
    try:
        with Image.open(p) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                arr = (arr / (65535.0 if arr.max() > 255 else 255.0))[None].astype(np.float32)
                return np.repeat(arr, channels, axis=0)
            img = img.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{what} {p} cannot be read as an image ({e}); pass a PNG, JPEG or TIFF file.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)``: True where pixels are missing (any non-black pixel of the mask image)."""
    from PIL import Image, UnidentifiedImageError  # optional heavy dependency: Pillow

    p = existing(path, "Mask")
    try:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("L")) > 127
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"Mask {p} cannot be read as an image ({e}); pass a black-and-white PNG.") from None
    if arr.shape != tuple(shape):
        raise DataError(f"Mask {p} is {arr.shape[1]}x{arr.shape[0]} pixels but the input image is "
                        f"{shape[1]}x{shape[0]}; pass a mask of the same size (white = missing).")
    return arr


def write_image(image: np.ndarray, path: str | Path) -> Path:
    """``(C, H, W)`` in [0, 1] -> 8-bit PNG/JPEG/TIFF (written atomically)."""
    from PIL import Image  # optional heavy dependency: Pillow

    arr = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    arr = (arr * 255).round().astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    p = Path(path).expanduser()
    fmt = Image.registered_extensions().get(p.suffix.lower(), "PNG")
    return atomic_write(p, lambda tmp: Image.fromarray(arr).save(tmp, format=fmt), suffix=p.suffix)


def read_audio(path: str | Path, what: str = "Input") -> tuple[np.ndarray, int]:
    """``((C, L) float32, sample rate)`` of a whole recording, in the file's full scale [-1, 1]."""
    import soundfile as sf  # optional heavy dependency: soundfile (libsndfile)

    p = existing(path, what)
    try:
        data, rate = sf.read(p, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{what} {p} cannot be read as sound ({e}); pass a WAV, FLAC or OGG file.") from None
    if data.shape[0] == 0:
        raise DataError(f"{what} {p} holds no samples; pass a recording that is not empty.")
    return np.ascontiguousarray(data.T), int(rate)


def write_audio(wave: np.ndarray, rate: int, path: str | Path) -> Path:
    """``(C, L)`` -> 32-bit float WAV (peaks above full scale kept) or 24-bit FLAC (clipped to [-1, 1])."""
    import soundfile as sf  # optional heavy dependency: soundfile (libsndfile)

    p = Path(path).expanduser()
    if p.suffix.lower() == ".flac":
        data, fmt, subtype = np.clip(wave, -1, 1), "FLAC", "PCM_24"
    else:
        data, fmt, subtype = np.asarray(wave), "WAV", "FLOAT"
    return atomic_write(p, lambda tmp: sf.write(str(tmp), data.T, rate, subtype=subtype, format=fmt),
                        suffix=p.suffix)


def read_nifti(path: str | Path, what: str = "Input") -> tuple[np.ndarray, np.ndarray, object]:
    """``(float32 array as stored, affine, header)`` of a 2D or 3D NIfTI image (a 4D file with one volume is
    taken as 3D); complex data become magnitudes; NaN or infinite voxels are refused."""
    import nibabel as nib  # optional heavy dependency: nibabel

    p = existing(path, what, " (a .nii or .nii.gz volume)")
    try:
        img = nib.load(str(p))
        arr = np.asarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - any nibabel failure means the file is not a usable NIfTI
        raise DataError(f"{what} {p} could not be read as NIfTI ({type(e).__name__}: {e}); pass a .nii or .nii.gz "
                        "volume.") from None
    arr = (np.abs(arr) if np.iscomplexobj(arr) else arr).astype(np.float32)
    while arr.ndim > 3 and arr.shape[-1] == 1:  # trailing singleton dimensions carry no data
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise DataError(f"{what} {p} has shape {arr.shape}; pass one 2D or 3D volume (split 4D series first).")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} {p} holds NaN or infinite voxels; fix or mask them first.")
    return arr, np.asarray(img.affine), img.header


def write_nifti(volume: np.ndarray, affine: np.ndarray, path: str | Path, header=None) -> Path:
    """``volume`` as stored (axes as given) into a float32 NIfTI, atomically; ``header`` (e.g. the input's)
    keeps its geometry, never its free-text fields."""
    import nibabel as nib  # optional heavy dependency: nibabel

    p = Path(path).expanduser()
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine,
                          header=header.copy() if header is not None else None)
    img.set_data_dtype(np.float32)
    for text_field in NIFTI_TEXT_FIELDS:
        if text_field in img.header:
            img.header[text_field] = b""
    # nibabel picks the format (gzip or not) by the suffix, so the temporary file keeps it
    return atomic_write(p, lambda tmp: nib.save(img, str(tmp)), suffix=nifti_suffix(p) or ".nii")


def open_hdf5(path: str | Path, what: str = "Input", hint: str = ""):
    """An HDF5 file opened read-only (the input is never modified), or a DataError naming it."""
    import h5py  # optional heavy dependency: h5py

    p = existing(path, what, hint)
    if not h5py.is_hdf5(p):
        raise DataError(f"{what} {p} is not an HDF5 file{'; ' + hint if hint else ''}.")
    return h5py.File(p, "r")


def write_npy(array: np.ndarray, path: str | Path) -> Path:
    return atomic_write(Path(path).expanduser(), lambda tmp: np.save(tmp, np.asarray(array, dtype=np.float32)),
                        suffix=".npy")


def finite_json(data):
    """``data`` with numpy scalars and arrays as plain values and every NaN or infinity as ``None``, plus the
    ``"key.path": "nan" | "inf" | "-inf"`` of each value replaced (JSON has no such numbers)."""
    replaced: dict[str, str] = {}

    def walk(node, where: str):
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, np.ndarray):
            return walk(node.tolist(), where)
        if isinstance(node, np.generic):
            node = node.item()
        if isinstance(node, float) and not math.isfinite(node):
            replaced[where] = "nan" if math.isnan(node) else ("inf" if node > 0 else "-inf")
            return None
        return node

    return walk(data, ""), replaced


def write_json(data: dict, path: str | Path) -> Path:
    """``data`` as indented JSON, atomically. JSON has no NaN or infinity: such a value is written as ``null``
    and named under ``"non_finite"`` (e.g. ``{"metrics.reconstruction.psnr": "inf"}`` for an exact match)."""
    clean, replaced = finite_json(data)
    if replaced and isinstance(clean, dict):
        clean["non_finite"] = {**(clean.get("non_finite") or {}), **replaced}
    text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
    return atomic_write(Path(path).expanduser(), lambda tmp: tmp.write_text(text), suffix=".json")
