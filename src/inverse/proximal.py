"""Noise-aware data consistency: the proximal step for ``y = A x + n`` with Gaussian noise of known std.

The hard projection onto ``{A x = y}`` trusts every measured value exactly, so with noisy measurements it
copies the noise into the result. The proximal step instead weighs the measurement against the denoised
estimate ``x0`` by their uncertainties (the data step of DiffPIR, Zhu et al., CVPR 2023):

    x = argmin_x  ||A x - y||^2 / noise_std^2  +  ||x - x0||^2 / prior_std^2
      = (A^H A + rho I)^-1 (A^H y + rho x0),        rho = noise_std^2 / prior_std^2

``prior_std`` is the error of the denoiser at the current noise level: large early in sampling (the data
win) and small at the end (the prior wins where the data are noisy). As ``noise_std -> 0`` the step becomes
the hard projection.
"""

from __future__ import annotations

import math

import torch

from .operators import LinearOperator, conjugate_gradient


def denoiser_error_std(sigma: float, data_std: float = 0.5) -> float:
    """Error std of the optimal denoiser of Gaussian data of std ``data_std`` at noise level ``sigma``."""
    return sigma * data_std / math.sqrt(sigma**2 + data_std**2)


def proximal_consistency(operator: LinearOperator, x0: torch.Tensor, y: torch.Tensor, noise_std: float,
                         prior_std: float, iters: int = 10) -> torch.Tensor:
    """``argmin ||A x - y||^2 / noise_std^2 + ||x - x0||^2 / prior_std^2`` by CG from ``x0``."""
    if noise_std <= 0:
        return operator.data_consistency(x0, y, iters)
    rho = (noise_std / max(prior_std, 1e-12)) ** 2
    rhs = operator.adjoint(y) + rho * x0
    return conjugate_gradient(lambda v: operator.normal(v) + rho * v, rhs, x0, iters)
