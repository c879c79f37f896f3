"""Images: a folder of png/jpg (recursive), webdataset shards of them, or the built-in synthetic shapes."""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.base import DiffusionDataModule, FileItems, Subset, probe_folder, split_indices
from src.errors import DataError, fraction, positive_int

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
EXTENSIONS = IMAGE_EXTENSIONS  # what `python -m datamodules.shards --domain image` packs
UNREADABLE = (OSError, UnidentifiedImageError, ValueError)  # what a file that cannot be used raises


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


MIN_SIDE = 8  # pixels: a smaller image holds too little to resize into a training image
# high-bit-depth grayscale modes and the value that maps to white (Pillow reads 16-bit PNGs as I;16 or I)
HIGH_DEPTH_WHITE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def open_image(source) -> Image.Image:
    """``Image.open`` whose refusal of a huge image (a decompression bomb) is a ValueError like a bad file."""
    try:
        return Image.open(source)
    except Image.DecompressionBombError as e:
        raise ValueError(f"too large to decode safely ({e})") from None


def _unit_gray(img: Image.Image) -> Image.Image:
    """A high-bit-depth grayscale image as mode F scaled by its real range to [0, 1] (not clipped at 255)."""
    white = HIGH_DEPTH_WHITE[img.mode]
    arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("holds NaN or infinite pixels")
    if arr.size and (arr.min() < 0 or arr.max() > white):
        raise ValueError(f"{img.mode} pixel values {arr.min():g}..{arr.max():g} lie outside 0..{white:g}; "
                         "save it as an 8- or 16-bit image")
    return Image.fromarray((arr / white).astype(np.float32), mode="F")


def to_tensor(img: Image.Image, resolution: int, channels: int, flip: bool) -> torch.Tensor:
    """Resize the shorter side to ``resolution``, centre-crop, optionally flip, scale to [-1, 1]."""
    high_depth = img.mode in HIGH_DEPTH_WHITE
    img = _unit_gray(img) if high_depth else img.convert("RGB" if channels == 3 else "L")
    w, h = img.size
    scale = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                     Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    if high_depth:  # bicubic overshoots; 8-bit images are clipped by their integer type
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 2.0 - 1.0
        arr = np.repeat(arr[None], channels, axis=0)
    else:
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.flip(-1) if flip else t


def _check_size(img: Image.Image) -> None:
    if min(img.size) < MIN_SIDE:
        raise ValueError(f"is {img.size[0]}x{img.size[1]} pixels, smaller than the minimum of {MIN_SIDE} "
                         "on its shorter side")


def _check_header(path: Path) -> Path:
    """Open the header only: cheap, and catches non-images, broken headers and images too small or too large."""
    with open_image(path) as img:
        _check_size(img)
    return path


def pack_sample(path: Path) -> tuple[dict[str, bytes], dict]:
    """The file's own encoded bytes, once its header passes the folder path's test of a file."""
    with open_image(path) as img:  # header only; UnidentifiedImageError is an OSError
        _check_size(img)
        width, height, mode = *img.size, img.mode
    meta = {"width": width, "height": height, "mode": mode}
    return {path.suffix.lower().lstrip("."): path.read_bytes()}, meta


def decode_sample(sample: dict, resolution: int, channels: int, random_flip: bool) -> dict:
    """One shard sample -> ``{"x": tensor}``, exactly as ``ImageFolder`` reads the same file."""
    ext = next((e[1:] for e in sorted(IMAGE_EXTENSIONS) if e[1:] in sample), None)
    if ext is None:
        raise ValueError(f"no image member ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the sample")
    with open_image(io.BytesIO(sample[ext])) as img:
        _check_size(img)
        flip = random_flip and bool(torch.randint(0, 2, (1,)).item())
        return {"x": to_tensor(img, resolution, channels, flip)}


class ImageFolder(FileItems):
    what, unreadable = "image", UNREADABLE

    def __init__(self, files: list[Path], resolution: int, channels: int, random_flip: bool,
                 labels: list[int] | None = None, captions: list[str] | None = None):
        super().__init__(files, labels, captions)
        self.resolution, self.channels, self.random_flip = resolution, channels, random_flip

    def load(self, i: int) -> torch.Tensor:
        with open_image(self.files[i]) as img:
            _check_size(img)
            flip = self.random_flip and bool(torch.randint(0, 2, (1,)).item())
            return to_tensor(img, self.resolution, self.channels, flip)


SHAPE_NAMES = ("circle", "square", "triangle")
# named colours in [-1, 1] RGB; a shape's colour is called by the nearest one (cond=text on the built-in data)
COLOUR_NAMES = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1),
                "cyan": (-1, 1, 1), "magenta": (1, -1, 1), "white": (1, 1, 1), "black": (-1, -1, -1),
                "grey": (0, 0, 0)}


def colour_name(rgb) -> str:
    rgb = np.asarray(rgb, dtype=np.float32)
    return min(COLOUR_NAMES, key=lambda k: float(((np.asarray(COLOUR_NAMES[k]) - rgb) ** 2).sum()))


class SyntheticShapes(Dataset):
    """Built-in data: coloured circles, squares and triangles on smooth gradients, one image per index.

    Deterministic per index and generated on the fly, so nothing is downloaded or stored.
    """

    def __init__(self, size: int, resolution: int, channels: int, seed: int = 0, random_flip: bool = False,
                 with_captions: bool = False):
        self.size, self.resolution, self.channels, self.seed = size, resolution, channels, seed
        self.random_flip, self.with_captions = random_flip, with_captions
        r = resolution
        yy, xx = np.mgrid[0:r, 0:r].astype(np.float32) / max(r - 1, 1)
        self.yy, self.xx = yy, xx

    def __len__(self) -> int:
        return self.size

    def render(self, i: int) -> np.ndarray:
        return self.draw(i)[0]

    def caption(self, i: int) -> str:
        """What image ``i`` shows, in words: ``a red circle and a blue square`` (later shapes lie on top)."""
        return self.draw(i)[1]

    def captions(self) -> list[str]:
        return [self.caption(i) for i in range(self.size)]

    def draw(self, i: int) -> tuple[np.ndarray, str]:
        rng = np.random.default_rng([self.seed, i])
        c0, c1 = rng.uniform(-1, 1, (2, 3)).astype(np.float32) * 0.6
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * self.xx + np.sin(angle) * self.yy
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        img = c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp
        words = []
        for _ in range(rng.integers(1, 4)):
            kind = rng.integers(0, 3)
            cx, cy = rng.uniform(0.2, 0.8, 2)
            s = rng.uniform(0.1, 0.3)
            if kind == 0:
                mask = (self.xx - cx) ** 2 + (self.yy - cy) ** 2 < s**2
            elif kind == 1:
                mask = (np.abs(self.xx - cx) < s) & (np.abs(self.yy - cy) < s)
            else:
                mask = (self.yy - cy > -s) & (np.abs(self.xx - cx) < (self.yy - cy + s) / 2)
            colour = rng.uniform(-1, 1, 3).astype(np.float32)
            img = np.where(mask[None], colour[:, None, None], img)
            words.append(f"a {colour_name(colour)} {SHAPE_NAMES[kind]}")
        if self.channels == 1:
            img = img.mean(0, keepdims=True)
        return np.clip(img, -1, 1).astype(np.float32), " and ".join(words)

    def __getitem__(self, i: int) -> dict:
        img, caption = self.draw(i)
        x = torch.from_numpy(img)
        if self.random_flip and bool(torch.randint(0, 2, (1,)).item()):
            x = x.flip(-1)
        return {"x": x, "caption": caption} if self.with_captions else {"x": x}


class ImageDataModule(DiffusionDataModule):
    def __init__(self, path: str | None = None, resolution: int = 32, channels: int = 3,
                 random_flip: bool = True, val_fraction: float = 0.05, max_bad_fraction: float = 0.01,
                 builtin_size: int = 2048, **kw):
        super().__init__(**kw)
        if channels not in (1, 3):
            raise DataError(f"datamodule.channels must be 1 or 3 for images, got {channels}.")
        resolution = positive_int(resolution, "datamodule.resolution", minimum=MIN_SIDE)
        val_fraction, max_bad_fraction = (fraction(val_fraction, "datamodule.val_fraction"),
                                          fraction(max_bad_fraction, "datamodule.max_bad_fraction"))
        builtin_size = positive_int(builtin_size, "datamodule.builtin_size")
        self.path, self.resolution, self.channels = path, resolution, channels
        self.random_flip, self.val_fraction = random_flip, val_fraction
        self.max_bad_fraction, self.builtin_size = max_bad_fraction, builtin_size
        self._listing: tuple[list[Path], list[int] | None] | None = None

    @property
    def data_shape(self) -> list[int]:
        return [self.channels, self.resolution, self.resolution]

    def _scan(self, root: Path) -> list[Path]:
        return probe_folder(root, "image", "png/jpg images", list_images, _check_header,
                            UNREADABLE, self.max_bad_fraction,
                            "built-in data")[0]

    def folder_classes(self) -> list[str]:
        return self.labelled_folder_classes()

    def shard_decoder(self, train: bool):
        return functools.partial(decode_sample, resolution=self.resolution, channels=self.channels,
                                 random_flip=self.random_flip and train)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.is_streaming:
            return
        if self.path:
            files, labels, train_idx, val_idx = self.split_files()
            self.train_set = ImageFolder([files[i] for i in train_idx], self.resolution, self.channels,
                                         self.random_flip, **self.item_extras(labels, train_idx))
            self.val_set = ImageFolder([files[i] for i in val_idx], self.resolution, self.channels, False,
                                       **self.item_extras(labels, val_idx))
        else:
            if self.label_source != "none":
                raise self.no_builtin_labels()
            # the built-in shapes describe themselves ("a red circle and a blue square"): cond=text needs no files
            text = self.has_captions
            full = SyntheticShapes(self.builtin_size, self.resolution, self.channels, seed=self.seed,
                                   with_captions=text)
            train_idx, val_idx = split_indices(len(full), self.val_fraction, self.seed)
            self.train_set = Subset(SyntheticShapes(self.builtin_size, self.resolution, self.channels,
                                                    seed=self.seed, random_flip=self.random_flip,
                                                    with_captions=text), train_idx)
            self.val_set = Subset(full, val_idx)
