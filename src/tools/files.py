"""Reading and writing the tools' files: images (Pillow), sound (soundfile), NIfTI (nibabel), JSON.

Images are float32 ``(C, H, W)`` in [0, 1]; sound is float32 ``(C, L)`` in the file's full scale [-1, 1].
Every failure names the file and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from src.fileio import atomic_write

from .domains import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")


def kind_of(path: str | Path) -> str | None:
    name = str(path).lower()
    for kind, exts in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS), ("nifti", NIFTI_EXTENSIONS),
                       ("npy", (".npy",))):
        if name.endswith(exts):
            return kind
    return None


def stem(path: str | Path) -> tuple[Path, str]:
    """``OUT`` split into (path without extension, extension); ``.nii.gz`` counts as one extension."""
    p = Path(path).expanduser()
    ext = ".nii.gz" if p.name.lower().endswith(".nii.gz") else p.suffix
    return p.with_name(p.name[:len(p.name) - len(ext)] if ext else p.name), ext


def sibling(out: str | Path, tag: str, ext: str | None = None) -> Path:
    """``OUT.tag.ext`` beside ``OUT`` (the output's own extension unless ``ext``)."""
    base, own = stem(out)
    return base.with_name(f"{base.name}.{tag}{ext if ext is not None else own}")


def existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist or is not a file; pass the path of an existing file.")
    return p


def read_image(path: str | Path, channels: int, what: str = "Input") -> np.ndarray:
    """``(channels, H, W)`` float32 in [0, 1]; colour is converted to gray (or gray repeated) as the model needs."""
    from PIL import Image, UnidentifiedImageError

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
    from PIL import Image, UnidentifiedImageError

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
    from PIL import Image

    arr = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    arr = (arr * 255).round().astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    p = Path(path)
    return _atomic(p, lambda tmp: Image.fromarray(arr).save(tmp, format=Image.registered_extensions().get(
        p.suffix.lower(), "PNG")))


def read_audio(path: str | Path, what: str = "Input") -> tuple[np.ndarray, int]:
    """``((C, L) float32, sample rate)`` of a whole recording."""
    import soundfile as sf

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
    import soundfile as sf

    p = Path(path)
    if p.suffix.lower() == ".flac":
        data, fmt, subtype = np.clip(wave, -1, 1), "FLAC", "PCM_24"
    else:
        data, fmt, subtype = np.asarray(wave), "WAV", "FLOAT"
    return _atomic(p, lambda tmp: sf.write(tmp, data.T, rate, subtype=subtype, format=fmt))


def read_nifti(path: str | Path, what: str = "Input"):
    """``(float32 volume, affine, header)``; a 4D file must have one volume."""
    import nibabel as nib

    p = existing(path, what)
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as e:
        raise DataError(f"{what} {p} cannot be read as NIfTI ({e}); pass a .nii or .nii.gz volume.") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise DataError(f"{what} {p} has shape {data.shape}; pass one 2D or 3D volume (split 4D series first).")
    if not np.isfinite(data).all():
        raise DataError(f"{what} {p} holds NaN or infinite voxels; fix or mask them before screening.")
    return data, img.affine, img.header


def write_nifti(volume: np.ndarray, affine, path: str | Path) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    p = Path(path)
    suffix = ".nii.gz" if p.name.lower().endswith(".nii.gz") else ".nii"
    return _atomic(p, lambda tmp: nib.save(img, tmp), suffix=suffix)


def write_npy(array: np.ndarray, path: str | Path) -> Path:
    return _atomic(Path(path), lambda tmp: np.save(tmp, np.asarray(array, dtype=np.float32)), suffix=".npy")


def write_json(data: dict, path: str | Path) -> Path:
    return _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"), suffix=".json")


def _atomic(path: Path, write, suffix: str | None = None) -> Path:
    """The project's atomic write (temporary file, fsync, rename); the temporary name ends in ``suffix``
    (default the file's own), for writers that choose the format by it."""
    return atomic_write(path.expanduser(), lambda tmp: write(str(tmp)),
                        suffix=suffix if suffix is not None else path.suffix)
