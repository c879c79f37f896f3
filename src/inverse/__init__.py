"""Inverse problems with a diffusion prior over any linear measurement operator (no domain knowledge here)."""

from .operators import Downsampling, Inpainting, LinearOperator, conjugate_gradient
from .proximal import denoiser_error_std, proximal_consistency
from .sampler import projection_step, sample_posterior
from .tv import tv_reconstruct

__all__ = ["Downsampling", "Inpainting", "LinearOperator", "conjugate_gradient", "denoiser_error_std",
           "projection_step", "proximal_consistency",
           "sample_posterior", "tv_reconstruct"]
