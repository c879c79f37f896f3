"""The MRI pipeline as MONAI dictionary transforms.

Deterministic part (run once per volume, then cached): read with MONAI's NibabelReader or PydicomReader
(or draw a built-in phantom), channel first, complex -> (real, imag) or magnitude, content checks, RAS
orientation, resampling to ``datamodule.spacing``, percentile scaling to [-1, 1], cropping to the head,
padding/cropping to the configured shape plus a crop margin. Random part (per draw): random crop to the
shape and a left-right flip.

Intensity convention (also what a reconstruction tool needs to match): per volume, ``s`` is the
``intensity_percentile`` of the voxel magnitude; magnitude ``m`` maps to ``clip(2 m / s - 1, -1, 1)`` (zero
signal is -1), complex ``z`` maps to ``(Re z, Im z) / s`` clipped to magnitude <= 1 (zero signal is 0).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    Orientationd,
    RandFlipd,
    RandSpatialCropd,
    ResizeWithPadOrCropd,
    Spacingd,
    Transform,
)

from .phantoms import head_phantom

KEY = "image"


class VolumeError(Exception):
    """This volume cannot be used; the message says why."""


def magnitude_fraction(x: torch.Tensor, complex_valued: bool, dim: int = 0) -> torch.Tensor:
    """Scaled data -> signal magnitude as a fraction of the reference intensity, with channel axis ``dim``
    kept at size 1: ``|re + i im|`` for (real, imaginary) channels, ``(x + 1) / 2`` for magnitude data."""
    if complex_valued:
        return torch.sqrt((x.float() ** 2).sum(dim, keepdim=True))
    return (x.narrow(dim, 0, 1).float() + 1) / 2


def sample_magnitude(samples: torch.Tensor) -> torch.Tensor:
    """Samples ``(N, C, *spatial)`` in [-1, 1] (C=1 magnitude, C=2 real/imaginary) -> ``(N, 1, *spatial)``
    magnitudes in [0, 1], on the CPU."""
    x = samples.detach().float().cpu().clamp(-1, 1)
    return magnitude_fraction(x, x.shape[1] == 2, dim=1).clamp(0, 1)


class NiftiBytes:
    """A NIfTI file's bytes (a shard member) standing in for its path; ``str`` is a name for messages."""

    def __init__(self, name: str, data: bytes, gzipped: bool):
        self.name, self.data, self.gzipped = name, data, gzipped

    def __str__(self) -> str:
        return self.name


class NiftiBytesReader(NibabelReader):
    """MONAI's NibabelReader over ``NiftiBytes`` instead of a path, so ``LoadImage`` converts a shard member
    exactly as it converts the file on disk (nibabel's ``load`` takes only file names)."""

    def verify_suffix(self, filename) -> bool:
        return True

    def read(self, data, **kwargs):
        (item,) = data if isinstance(data, (tuple, list)) else (data,)
        raw = gzip.decompress(item.data) if item.gzipped else item.data
        self.filenames = (str(item),)
        # sizeof_hdr, the first field, tells NIfTI-2 (540) from NIfTI-1 (348) in either byte order
        nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
        img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)
        return correct_nifti_header_if_necessary(img)


class LoadVolumed(MapTransform):
    """Reads an item with the MONAI reader its format needs, or draws a built-in phantom; channel first."""

    def __init__(
        self,
        select_channel: int | None = None,
        phantom_shape: Sequence[int] | None = None,
        phantom_spacing: Sequence[float] = (1.0, 1.0, 1.0),
        complex_phantom: bool = False,
    ):
        super().__init__(KEY)
        self.select_channel = select_channel
        self.phantom_shape, self.phantom_spacing = phantom_shape, list(phantom_spacing)
        self.complex_phantom = complex_phantom
        self.loaders: dict[str, LoadImage] = {}

    def _loader(self, kind: str) -> LoadImage:
        if kind not in self.loaders:  # built on first use: PydicomReader probes optional GPU decoders noisily
            readers = {"nifti": NibabelReader, "nifti_bytes": NiftiBytesReader}
            reader = readers[kind](squeeze_non_spatial_dims=True) if kind in readers else PydicomReader()
            # dtype=None keeps complex voxels complex; the next transform decides magnitude or (real, imag)
            self.loaders[kind] = LoadImage(
                reader=reader, image_only=True, dtype=None, ensure_channel_first=True,
                expanduser=kind != "nifti_bytes",
            )
        return self.loaders[kind]

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        if d["reader"] == "phantom":
            arr = head_phantom(self.phantom_shape, seed=int(d["seed"]), complex_valued=self.complex_phantom)
            affine = torch.diag(torch.tensor([*self.phantom_spacing, 1.0], dtype=torch.float64))
            img = MetaTensor(torch.from_numpy(arr)[None], affine=affine)
        else:
            img = self._loader(d["reader"])(d[KEY])
        if img.ndim != 4:
            raise VolumeError(f"has {img.ndim - 1} spatial dimensions, but a 3D volume is expected")
        if img.shape[0] > 1:
            if self.select_channel is None:
                raise VolumeError(f"holds {img.shape[0]} volumes; set datamodule.select_channel to pick one")
            if self.select_channel >= img.shape[0]:
                raise VolumeError(f"holds {img.shape[0]} volumes, datamodule.select_channel is out of range")
            img = img[self.select_channel : self.select_channel + 1]
        if min(img.shape[1:]) < 2:
            raise VolumeError(f"is 2D (shape {tuple(img.shape[1:])}), but a 3D volume is expected")
        d[KEY] = img
        return d


class ToChannelsd(MapTransform):
    """Complex voxels -> (real, imaginary) channels or magnitude; rejects non-finite and constant volumes."""

    def __init__(self, channels: int):
        super().__init__(KEY)
        self.channels = channels

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        img = d[KEY]
        if img.is_complex():
            img = torch.cat([img.real, img.imag]) if self.channels == 2 else img.abs()
        elif self.channels == 2:
            raise VolumeError(
                "is real-valued (no phase); complex training (datamodule.channels=2) needs "
                "complex-valued volumes, use datamodule.channels=1 for magnitude images"
            )
        else:
            img = img.float()
        img = img.float()
        finite = torch.isfinite(img)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise VolumeError(f"has {bad} NaN or infinite voxels")
        flat = img.flatten(1)
        spread = float((flat.amax(1) - flat.amin(1)).max())
        peak = float(flat.abs().max())
        if spread <= 1e-6 * max(peak, 1e-30):
            raise VolumeError(
                "is empty (all zero)" if peak == 0 else "is constant (every voxel has the same value)"
            )
        d[KEY] = img
        return d


def reference_intensity(x: torch.Tensor, complex_valued: bool, percentile: float) -> float:
    """``s`` of the convention: the ``percentile`` of the voxel magnitude of a channel-first image."""
    mag = torch.sqrt((x.float() ** 2).sum(0)) if complex_valued else x[0].abs().float()
    flat = torch.as_tensor(mag).flatten()
    stride = max(1, flat.numel() // 2**22)  # a subsample keeps the percentile cheap on large volumes
    return float(np.percentile(flat[::stride].numpy(), percentile))


def to_unit_range(x: torch.Tensor, s: float, complex_valued: bool) -> torch.Tensor:
    """Channel-first magnitude (C=1) or (real, imag) (C=2) -> the model's [-1, 1] range, given ``s``."""
    if complex_valued:
        z = x / s
        return z / torch.sqrt((z**2).sum(0, keepdim=True)).clamp(min=1.0)
    return (2 * x / s - 1).clamp(-1.0, 1.0)


def from_unit_range(x: torch.Tensor, s: float) -> torch.Tensor:
    """The inverse of ``to_unit_range`` (below the clipping): model range -> signal units."""
    return x * s if x.shape[0] == 2 else (x + 1) * s / 2


class ScalePercentiled(MapTransform):
    """Zero-anchored percentile scaling to [-1, 1] (see the module docstring).

    Written here because MONAI's ScaleIntensityRangePercentiles maps the minimum, not zero, to -1 and cannot
    scale (real, imaginary) channels by their joint magnitude; a map linear in the signal is what
    reconstruction needs.
    """

    def __init__(self, percentile: float, complex_valued: bool):
        super().__init__(KEY)
        self.percentile, self.complex_valued = percentile, complex_valued

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        s = reference_intensity(d[KEY], self.complex_valued, self.percentile)
        if not s > 0:
            raise VolumeError(f"has no signal at the {self.percentile}th intensity percentile")
        d[KEY] = to_unit_range(d[KEY], s, self.complex_valued)
        return d


class ForegroundMask:
    """Select function for CropForegroundd: magnitude above ``threshold`` of the reference intensity,
    after a 3-voxel box average so isolated noise voxels do not stretch the bounding box."""

    def __init__(self, threshold: float, complex_valued: bool):
        self.threshold, self.complex_valued = threshold, complex_valued

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        frac = magnitude_fraction(torch.as_tensor(img), self.complex_valued)
        pool = F.avg_pool3d if frac.ndim == 4 else F.avg_pool2d
        return (
            pool(frac[None], kernel_size=3, stride=1, padding=1, count_include_pad=False)[0] > self.threshold
        )


def slice_foreground(volume: torch.Tensor, axis: int, threshold: float, complex_valued: bool) -> torch.Tensor:
    """Share of each slice along spatial ``axis`` that is foreground, shape (n_slices,)."""
    mask = magnitude_fraction(volume, complex_valued)[0] > threshold
    dims = [a for a in range(3) if a != axis]
    return mask.float().mean(dim=dims)


def load_size(shape: Sequence[int], crop_margin: float) -> list[int]:
    return [int(math.ceil(n * (1 + crop_margin))) for n in shape]


def prepare_chain(
    *,
    channels: int,
    spacing: Sequence[float | None] | None,
    percentile: float,
    foreground_threshold: float,
    foreground_margin: int,
    padded_size: Sequence[int],
    select_channel: int | None = None,
    phantom_shape: Sequence[int] | None = None,
    phantom_spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Compose:
    """The deterministic transforms, run once per volume. ``padded_size`` entries <= 0 keep that axis."""
    complex_valued = channels == 2
    steps: list = [
        LoadVolumed(select_channel, phantom_shape, phantom_spacing, complex_phantom=complex_valued),
        ToChannelsd(channels),
        Orientationd(KEY, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if spacing is not None and any(s is not None for s in spacing):
        # a null entry keeps the native spacing of that axis (MONAI's convention for non-positive pixdim)
        pixdim = [float(s) if s is not None else -1.0 for s in spacing]
        steps.append(Spacingd(KEY, pixdim=pixdim, mode="bilinear", dtype=np.float32))
    steps += [
        ScalePercentiled(percentile, complex_valued),
        CropForegroundd(
            KEY,
            source_key=KEY,
            select_fn=ForegroundMask(foreground_threshold, complex_valued),
            margin=foreground_margin,
            allow_smaller=True,
        ),
        ResizeWithPadOrCropd(
            KEY, spatial_size=list(padded_size), mode="constant", value=0.0 if complex_valued else -1.0
        ),  # pad with "no signal"
        EnsureTyped(KEY, data_type="tensor", dtype=torch.float32, track_meta=False),  # drop all metadata
    ]
    return Compose(steps)


def root_cause(e: BaseException) -> str:
    """MONAI wraps failures in 'applying transform ...'; report the original error in one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300]


class Prepare(Transform):
    """The deterministic chain, returning ``{"image": tensor}`` or ``{"error": why}`` instead of raising,
    so one bad volume is skipped and counted rather than crashing the cache."""

    def __init__(self, chain: Compose, foreground_threshold: float, complex_valued: bool):
        self.chain, self.threshold, self.complex_valued = chain, foreground_threshold, complex_valued

    def __call__(self, item: dict) -> dict:
        try:
            img = self.chain(item)[KEY]
        except Exception as e:  # noqa: BLE001 - any decoding failure means "skip this volume"
            cause = e
            while cause.__cause__ is not None and not isinstance(cause, VolumeError):
                cause = cause.__cause__
            if isinstance(cause, VolumeError):
                return {"error": str(cause)}
            return {"error": f"could not be decoded ({root_cause(e)})"}
        if not bool((magnitude_fraction(img, self.complex_valued) > self.threshold).any()):
            return {
                "error": "has no foreground above datamodule.foreground_threshold of its reference intensity"
            }
        return {KEY: img}


def augment_chain(shape: Sequence[int], train: bool, flip_axis: int | None) -> Compose:
    """Per-draw transforms of a (C, *spatial) tensor: random crop and flip to train, centre crop otherwise."""
    if not train:
        return Compose([CenterSpatialCropd(KEY, roi_size=list(shape))])
    steps: list = [RandSpatialCropd(KEY, roi_size=list(shape), random_size=False)]
    if flip_axis is not None:
        steps.append(RandFlipd(KEY, prob=0.5, spatial_axis=flip_axis))
    return Compose(steps)


def augment_item(volume: torch.Tensor, slice_index: int | None, axis: int, augment: Compose) -> dict:
    """One item ``{"x": tensor}``: the volume (or its slice ``slice_index`` along spatial ``axis``) through
    ``augment``, whose random state is drawn from numpy's global RNG (seeded per draw by the loaders)."""
    img = volume if slice_index is None else volume.select(axis + 1, slice_index)
    augment.set_random_state(seed=int(np.random.randint(0, 2**31 - 1)))
    x = augment({KEY: img})[KEY]
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return {"x": x.float().contiguous().clone()}
