"""File I/O for the whole project: atomic writes, and the one reader and writer per format the tools use.

Every file is written whole or not at all: a temporary file in the same folder, fsynced, then renamed into
place. Tools read and write PNG/JPEG/TIFF images, WAV/FLAC/OGG sound, NIfTI volumes, HDF5 files and JSON
here, with one set of checks (each failure a ``DataError`` naming the file and what to do) and one rule for
NIfTI headers (geometry kept, free text dropped). Images are float32 ``(C, H, W)`` in [0, 1]; sound is
float32 ``(C, L)`` in the file's full scale; NIfTI arrays keep the file's own axis order.
"""

from __future__ import annotations

import csv
import io
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
# values one input file may hold, checked against its header before anything is allocated (a fastMRI
# multi-coil knee volume holds about 1.2e8 complex values); DIFFUSION_MAX_INPUT_VALUES raises it
MAX_INPUT_VALUES = 1 << 28
MAX_VALUES_ENV = "DIFFUSION_MAX_INPUT_VALUES"
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a magnitude image may store
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


def max_input_values() -> int:
    try:
        return max(1, int(os.environ.get(MAX_VALUES_ENV, MAX_INPUT_VALUES)))
    except ValueError:
        return MAX_INPUT_VALUES


def check_header(path: Path, what: str, shape, dtype=None, kinds: str = NUMERIC_KINDS,
                 max_itemsize: int = 8) -> tuple[int, ...]:
    """The checks every reader makes on a file's header before it allocates anything: no empty axis, at
    most ``max_input_values()`` values, and (with ``dtype``) a number type of ``kinds`` no wider than
    ``max_itemsize`` bytes. A DataError names the file and what to do."""
    shape = tuple(int(n) for n in shape)
    if not shape or min(shape) <= 0:
        raise DataError(f"{what} {path} is empty (shape {shape}); pass a file that holds data.")
    n, cap = math.prod(shape), max_input_values()
    if n > cap:
        raise DataError(f"{what} {path} claims {n:,} values (shape {shape}), more than the {cap:,} one input "
                        f"may hold; pass a smaller file (or raise {MAX_VALUES_ENV} if it is real).")
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt.kind not in kinds or dt.itemsize > max_itemsize:
            names = {"b": "bool", "i": "integer", "u": "unsigned", "f": "float", "c": "complex"}
            allowed = " or ".join(names[k] for k in kinds)
            raise DataError(f"{what} {path} stores {dt} values; it must hold {allowed} numbers of at most "
                            f"{max_itemsize * 8} bits.")
    return shape


def check_finite(arr: np.ndarray, path: Path, what: str, unit: str = "values") -> np.ndarray:
    if not np.isfinite(arr).all():
        raise DataError(f"{what} {path} holds NaN or infinite {unit}; fix or remove them first.")
    return arr


def open_image(p: Path, what: str):
    """A Pillow image with its header checked (nothing decoded yet): a decompression bomb's header is one
    sentence, not Pillow's exception."""
    from PIL import Image, UnidentifiedImageError  # optional heavy dependency: Pillow

    try:
        img = Image.open(p)
    except Image.DecompressionBombError as e:
        raise DataError(f"{what} {p} is too large to decode safely ({e}); pass a smaller image.") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{what} {p} cannot be read as an image ({e}); pass a PNG, JPEG or TIFF file.") from None
    try:
        check_header(p, what, (len(img.getbands()), img.size[1], img.size[0]))
    except DataError:
        img.close()
        raise
    return img


def _unit_range(arr: np.ndarray, p: Path, what: str) -> np.ndarray:
    """High-depth gray values (16/32-bit integer or float) to [0, 1] by the range the values lie in: a float
    image in [0, 1] as is, else the first of 255 or 65535 that holds the maximum."""
    check_finite(arr, p, what, "pixels")
    if arr.size and arr.min() < 0:
        raise DataError(f"{what} {p} holds negative pixel values ({arr.min():g}); save it with values in 0..1 "
                        "(float) or 0..65535 (16-bit).")
    top = float(arr.max()) if arr.size else 0.0
    white = next((w for w in (1.0, 255.0, 65535.0) if top <= w), None)
    if white is None:
        raise DataError(f"{what} {p} holds pixel values up to {top:g}, beyond 16 bits; save it with values in 0..1 "
                        "(float) or 0..65535 (16-bit).")
    if white == 1.0 and arr.dtype.kind != "f":
        white = 255.0  # an integer image of 0s and 1s is nearly black, not white
    return (arr / white).astype(np.float32)


def read_image(path: str | Path, channels: int, what: str = "Input") -> np.ndarray:
    """``(channels, H, W)`` float32 in [0, 1]; colour is converted to gray (or gray repeated) as the model needs."""
    from PIL import UnidentifiedImageError  # optional heavy dependency: Pillow

    p = existing(path, what)
    try:
        with open_image(p, what) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16/32-bit gray, 32-bit float
                arr = _unit_range(np.asarray(img, dtype=np.float64), p, what)[None]
                return np.repeat(arr, channels, axis=0)
            img = img.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{what} {p} cannot be read as an image ({e}); pass a PNG, JPEG or TIFF file.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)``: True where pixels are missing (any non-black pixel of the mask image)."""
    from PIL import UnidentifiedImageError  # optional heavy dependency: Pillow

    p = existing(path, "Mask")
    try:
        with open_image(p, "Mask") as img:
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
        info = sf.info(str(p))
        if info.frames <= 0:
            raise DataError(f"{what} {p} holds no samples; pass a recording that is not empty.")
        check_header(p, what, (info.channels, info.frames))
        data, rate = sf.read(p, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{what} {p} cannot be read as sound ({e}); pass a WAV, FLAC or OGG file.") from None
    if data.shape[0] == 0:
        raise DataError(f"{what} {p} holds no samples; pass a recording that is not empty.")
    check_finite(data, p, what, "samples")
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
        shape, dtype = img.shape, img.get_data_dtype()
    except Exception as e:  # noqa: BLE001 - any nibabel failure means the file is not a usable NIfTI
        raise DataError(f"{what} {p} could not be read as NIfTI ({type(e).__name__}: {e}); pass a .nii or .nii.gz "
                        "volume.") from None
    check_header(p, what, shape, dtype, kinds=NUMERIC_KINDS + "c", max_itemsize=16)
    if not np.isfinite(np.asarray(img.affine)).all():
        raise DataError(f"{what} {p} has a NaN or infinite affine (voxel size or position); fix its header.")
    try:
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


def read_dataset(f, key: str, p: Path, what: str, kinds: str = NUMERIC_KINDS, max_itemsize: int = 8,
                 ranks: tuple[int, ...] | None = None) -> np.ndarray:
    """``f[key]`` of an open HDF5 file, its shape, size and number type checked before a byte is read."""
    ds = f[key]
    if not hasattr(ds, "dtype"):
        raise DataError(f"'{key}' in {what.lower()} {p} is a group, not a dataset; store the array itself.")
    label = f"'{key}' in {what.lower()}"
    if ranks is not None and len(ds.shape) not in ranks:
        counts = " or ".join(", ".join(map(str, ranks)).rsplit(", ", 1))
        raise DataError(f"{label} {p} has shape {tuple(ds.shape)}; expected {counts} axes.")
    check_header(p, label, ds.shape, ds.dtype, kinds, max_itemsize)
    return np.asarray(ds[()])


def write_npy(array: np.ndarray, path: str | Path) -> Path:
    return atomic_write(Path(path).expanduser(), lambda tmp: np.save(tmp, np.asarray(array, dtype=np.float32)),
                        suffix=".npy")


def read_csv(path: str | Path, what: str = "CSV file") -> tuple[list[str], list[dict[str, str]]]:
    """``(column names, rows)`` of a CSV file read as UTF-8 (a byte-order mark, as Excel writes, is dropped);
    any other encoding, or a file too large to be a table of labels, is one sentence."""
    p = Path(path).expanduser()
    size = p.stat().st_size
    if size > max_input_values():
        raise DataError(f"{what} {p} is {size:,} bytes, too large for a table; pass the CSV of labels.")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {p} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8 "
                        "(e.g. 'CSV UTF-8' in a spreadsheet).") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{what} {p} is not a readable CSV table ({e}); fix the file.") from None
    return [name.strip() for name in reader.fieldnames or []], rows


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
