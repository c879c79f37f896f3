"""MRI in webdataset shards (the interface is in ``datamodules/shards.py``; ``src.domains.mri.data`` exports it).

The writer packs each NIfTI file's own bytes (``KEY.nii`` or ``KEY.nii.gz``) after the folder path's header
check, with metadata limited to the voxel grid (``shape``, ``spacing`` in mm): no header field that could
name a patient. DICOM series are not packed (skipped and listed in ``summary.json``, with what to do).

Training decodes a member from its bytes with MONAI's ``NibabelReader`` (``NiftiBytesReader``) and runs the
folder path's chain: ``Prepare`` (orientation, resampling, scaling, cropping), then one item per sample:
the volume (``mode=volume``) or one slice with enough foreground (``mode=slice``: a random one to train,
drawn with torch's global RNG that the reader seeds per sample; the middle one to validate), then
``augment_chain``. Nothing is cached: every draw re-runs the deterministic chain on its volume.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import torch
from monai.transforms import Compose

from .io import NIFTI_SUFFIXES, HeaderError, nifti_header, nifti_suffix, scan_folder
from .transforms import KEY, NiftiBytes, Prepare, augment_item, slice_foreground

EXTENSIONS = set(NIFTI_SUFFIXES)  # what `python -m datamodules.shards --domain mri` packs
MEMBERS = ("nii.gz", "nii")


def list_items(root: Path) -> list[Path]:
    """The folder path's own listing: NIfTI files, then DICOM series folders (which ``pack_sample`` refuses,
    so they are listed in the summary instead of silently missing)."""
    return [Path(it[KEY]) for it in scan_folder(root)]


def pack_sample(path: Path) -> tuple[dict[str, bytes], dict]:
    """The file's bytes and its voxel grid, once it passes the folder path's header check (else ValueError)."""
    if path.is_dir():
        raise ValueError("is a DICOM series, which shards do not hold yet; convert it to NIfTI "
                         "(e.g. with dcm2niix) before packing, or train from the folder")
    try:
        # select_channel=0 lets 4D files through: which volume to train on is datamodule.select_channel
        spacing = nifti_header(str(path), select_channel=0)
        shape = [int(n) for n in nib.load(path).shape]
    except HeaderError as e:
        raise ValueError(str(e)) from None
    member = nifti_suffix(path).lstrip(".")
    return {member: path.read_bytes()}, {"shape": shape, "spacing": [round(s, 6) for s in spacing]}


class MRIShardDecoder:
    """One shard sample -> ``{"x": tensor}`` through the folder path's transforms (picklable for workers)."""

    def __init__(self, prepare: Prepare, augment: Compose, mode: str, axis: int, fg_threshold: float,
                 min_slice_fg: float, complex_valued: bool, train: bool):
        self.prepare, self.augment, self.mode, self.axis = prepare, augment, mode, axis
        self.fg_threshold, self.min_slice_fg = fg_threshold, min_slice_fg
        self.complex_valued, self.train = complex_valued, train

    def volume(self, sample: dict) -> torch.Tensor:
        """The preprocessed volume, as the folder path caches it; ValueError says why it is unusable."""
        member = next((m for m in MEMBERS if m in sample), None)
        if member is None:
            raise ValueError("no NIfTI member (.nii, .nii.gz) in the sample")
        data = NiftiBytes(str(sample.get("__key__", "sample")), sample[member], member == "nii.gz")
        out = self.prepare({KEY: data, "reader": "nifti_bytes"})
        if "error" in out:
            raise ValueError(f"volume {out['error']}")
        return out[KEY]

    def slice_index(self, volume: torch.Tensor) -> int | None:
        if self.mode == "volume":
            return None
        frac = slice_foreground(volume, self.axis, self.fg_threshold, self.complex_valued)
        usable = torch.nonzero(frac >= self.min_slice_fg).flatten()
        if len(usable) == 0:
            raise ValueError(f"no slice along datamodule.slice_axis={self.axis} has more than "
                             f"datamodule.min_slice_foreground={self.min_slice_fg} foreground")
        k = int(torch.randint(len(usable), (1,))) if self.train else len(usable) // 2
        return int(usable[k])

    def __call__(self, sample: dict) -> dict:
        volume = self.volume(sample)
        return augment_item(volume, self.slice_index(volume), self.axis, self.augment)
