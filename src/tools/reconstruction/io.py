"""Old import path of the scan readers and writers (benchmarks and scripts use it).

The code lives in ``src.domains.mri.fastmri`` (HDF5 k-space, NIfTI volumes as ``(slices, H, W)``, the display
affine) and ``src.fileio`` (every tool's files, JSON included); ``read_nifti``/``write_nifti`` here keep the
slice-first layout they always had.
"""

from src.domains.mri.fastmri import (
    REFERENCE_KEYS,
    KspaceScan,
    display_affine,
    read_kspace_h5,
    read_reference,
    voxel_size_from_ismrmrd,
)
from src.domains.mri.fastmri import read_slices as read_nifti
from src.domains.mri.fastmri import write_slices as write_nifti
from src.fileio import is_nifti, nifti_suffix, write_json
from src.fileio import nifti_stem as output_stem

__all__ = ["REFERENCE_KEYS", "KspaceScan", "display_affine", "is_nifti", "nifti_suffix", "output_stem",
           "read_kspace_h5", "read_nifti", "read_reference", "voxel_size_from_ismrmrd", "write_json", "write_nifti"]
