"""Centred orthonormal 2D FFTs and coil combination on complex tensors (fastMRI's conventions).

MONAI's helpers work on real views with a trailing (real, imag) axis; these wrappers keep the rest of the
code on native complex tensors ``(..., H, W)``.
"""

from __future__ import annotations

import torch
from monai.apps.reconstruction.mri_utils import root_sum_of_squares_t
from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Image ``(..., H, W)`` complex -> k-space: ``fftshift(fft2(ifftshift(x), norm='ortho'))``."""
    return torch.view_as_complex(fftn_centered_t(torch.view_as_real(image.contiguous()), spatial_dims=2))


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """K-space ``(..., H, W)`` complex -> image: ``fftshift(ifft2(ifftshift(k), norm='ortho'))``."""
    return torch.view_as_complex(ifftn_centered_t(torch.view_as_real(kspace.contiguous()), spatial_dims=2))


def rss(coil_images: torch.Tensor, coil_dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares coil combination of complex coil images (fastMRI's multi-coil target)."""
    return root_sum_of_squares_t(coil_images.abs(), spatial_dim=coil_dim)
