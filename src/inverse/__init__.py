"""Inverse problems with a diffusion prior over any linear measurement operator (no domain knowledge here)."""

from .operators import Downsampling, Inpainting, LinearOperator, conjugate_gradient
from .sampler import projection_step, sample_posterior
from .tv import tv_reconstruct

__all__ = ["Downsampling", "Inpainting", "LinearOperator", "conjugate_gradient", "projection_step",
           "sample_posterior", "tv_reconstruct"]
