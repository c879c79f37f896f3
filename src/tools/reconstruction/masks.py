"""Cartesian undersampling masks with fastMRI's definitions (MONAI's RandomKspaceMask / EquispacedKspaceMask).

A mask selects phase-encoding columns: the last axis ``W`` of k-space ``(..., H, W)``, as in fastMRI.
``random`` is fastMRI's ``RandomMaskFunc``; ``equispaced`` is fastMRI's ``EquispacedMaskFractionFunc``
(the spacing is adjusted so the overall sampled fraction is ``1 / acceleration`` including the centre).
"""

from __future__ import annotations

import torch
from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

from src.errors import ConfigError
from src.registry import Registry

MASK_KINDS = Registry("mask", {"random": RandomKspaceMask, "equispaced": EquispacedKspaceMask})


def undersampling_mask(kind: str, num_cols: int, acceleration: float, center_fraction: float,
                       seed: int | None = 0) -> torch.Tensor:
    """Boolean mask of ``num_cols`` columns; the central ``round(num_cols * center_fraction)`` are sampled."""
    mask_class = MASK_KINDS.get(kind)
    if acceleration < 1:
        raise ConfigError(f"--acceleration must be at least 1, got {acceleration}.")
    if not 0 < center_fraction < 1:
        raise ConfigError(f"--center-fraction must be between 0 and 1, got {center_fraction}.")
    num_low = int(round(num_cols * center_fraction))
    if num_low * acceleration >= num_cols:
        raise ConfigError(f"--center-fraction {center_fraction} already samples at least "
                         f"1/{acceleration:g} of the {num_cols} columns; use a smaller centre fraction or a "
                         "lower acceleration.")
    transform = mask_class(center_fractions=[center_fraction], accelerations=[acceleration],
                                 spatial_dims=1, is_complex=False)
    transform.set_random_state(seed=seed)
    transform(torch.zeros(1, num_cols))  # MONAI's transforms apply the mask; we only keep the mask they drew
    return transform.mask.reshape(num_cols).bool()


def center_region(mask_1d: torch.Tensor) -> tuple[int, int]:
    """``[start, stop)`` of the contiguous fully sampled run of columns around the k-space centre."""
    m = mask_1d.bool().tolist()
    c = len(m) // 2
    if not m[c]:
        return c, c
    lo, hi = c, c + 1
    while lo > 0 and m[lo - 1]:
        lo -= 1
    while hi < len(m) and m[hi]:
        hi += 1
    return lo, hi


def columns_from_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """Sampled columns of zero-filled k-space ``(..., H, W)``: those with any non-zero entry."""
    k = kspace.abs().reshape(-1, kspace.shape[-2], kspace.shape[-1])
    return (k > 0).any(dim=0).any(dim=0)


def centre_hann_window(columns: torch.Tensor, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """A Hann window over the fully sampled centre run of ``columns`` (zero elsewhere; its ends, which are
    zero in a Hann window, fall just outside the run), as long as ``columns``."""
    lo, hi = center_region(columns)
    device = columns.device if device is None else device
    window = torch.zeros(len(columns), dtype=dtype, device=device)
    window[lo:hi] = torch.hann_window(hi - lo + 2, periodic=False, dtype=dtype, device=device)[1:-1]
    return window
