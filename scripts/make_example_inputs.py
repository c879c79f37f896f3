"""Write tiny example inputs for ``python -m src.reconstruct``, made from the built-in head phantoms.

    python -m scripts.make_example_inputs [--out examples] [--size 64] [--slices 8]

- ``OUT/phantom_kspace.h5``: fastMRI-style single-coil file: ``kspace`` (slices x H x W, complex64,
  undersampled: zeros in the columns not measured), ``mask`` (one 0/1 entry per column), the fully sampled
  magnitude as ``reconstruction_esc`` (the single-coil reference key, for ``--reference``) and an
  ``ismrmrd_header`` with the field of view (so the output NIfTI has the voxel size).
- ``OUT/phantom.nii.gz``: the same phantom's fully sampled magnitude, for ``--simulate``.

The phantom is synthetic (no person's data); 64 x 64 matches the mri domain's slice training size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # also runnable as `python scripts/make_example_inputs.py`
    sys.path.insert(0, str(ROOT))

from src.domains.mri.phantoms import head_phantom  # noqa: E402
from src.errors import ProjectError, positive_int  # noqa: E402
from src.tools.reconstruction.fft import fft2c  # noqa: E402
from src.tools.reconstruction.io import display_affine, write_nifti  # noqa: E402
from src.tools.reconstruction.masks import MASK_KINDS, undersampling_mask  # noqa: E402

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace>
<matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>{fov_h}</x><y>{fov_w}</y><z>{mm}</z></fieldOfView_mm>
</encodedSpace></encoding></ismrmrdHeader>"""


def make_example_inputs(out: str | Path, size: int = 64, slices: int = 8, mask: str = "equispaced",
                        acceleration: float = 4.0, center_fraction: float = 0.08, seed: int = 0,
                        voxel_mm: float = 3.0) -> dict[str, Path]:
    """Write the example ``.h5`` and NIfTI under ``out``; returns their paths."""
    import h5py

    positive_int(size, "--size", 16)
    positive_int(slices, "--slices", 4)  # the phantom is a 3D head: a few slices at least
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    # complex-valued, as a scanner measures it: a smooth phase over the magnitude image
    volume = head_phantom((slices, size, size), seed=seed, complex_valued=True)
    image = torch.from_numpy(np.ascontiguousarray(volume)).to(torch.complex64)
    full = fft2c(image)
    columns = undersampling_mask(mask, size, acceleration, center_fraction, seed)
    kspace = (full * columns.to(full.dtype)).numpy().astype(np.complex64)
    magnitude = np.abs(volume).astype(np.float32)

    h5 = out / "phantom_kspace.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("mask", data=columns.numpy().astype(np.float32))
        f.create_dataset("reconstruction_esc", data=magnitude)
        f.create_dataset("ismrmrd_header", data=HEADER.format(h=size, w=size, fov_h=size * voxel_mm,
                                                               fov_w=size * voxel_mm, mm=voxel_mm).encode())
        f.attrs["acceleration"] = float(acceleration)
        f.attrs["note"] = "synthetic head phantom (src built-in), not patient data"
    nifti = write_nifti(magnitude, display_affine((voxel_mm, voxel_mm, voxel_mm)), out / "phantom.nii.gz")
    return {"h5": h5, "nifti": nifti}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.make_example_inputs", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="examples", help="folder for phantom_kspace.h5 and phantom.nii.gz")
    ap.add_argument("--size", type=int, default=64, help="slice side in pixels (the mri slice models' 64)")
    ap.add_argument("--slices", type=int, default=8, help="slices in the volume")
    ap.add_argument("--mask", choices=sorted(MASK_KINDS), default="equispaced",
                    help="undersampling mask of the .h5 file's k-space")
    ap.add_argument("--acceleration", type=float, default=4.0, help="one in this many columns is measured")
    ap.add_argument("--center-fraction", type=float, default=0.08,
                    help="share of central k-space columns always measured")
    ap.add_argument("--seed", type=int, default=0, help="phantom and mask seed")
    args = ap.parse_args(argv)
    try:
        paths = make_example_inputs(args.out, args.size, args.slices, args.mask, args.acceleration,
                                    args.center_fraction, args.seed)
    except ProjectError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {paths['h5']} (undersampled {args.acceleration:g}x single-coil k-space, mask, reference) "
          f"and {paths['nifti']} (fully sampled magnitude, for --simulate)")


if __name__ == "__main__":
    main()
