"""The maths of few-step students, as pure functions over denoisers ``D(x, sigma)`` (the VE view of
``src.diffusion``): the distillation grid, the consistency function's boundary scalings, the teacher's ODE
step, and the targets of consistency distillation (Song et al. 2023) and progressive distillation
(Salimans & Ho 2022). Nothing here knows about networks, domains or Lightning.
"""

from __future__ import annotations

import torch

from src.diffusion.objectives import Denoiser
from src.diffusion.schedules import karras_sigmas


def _b(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def distill_grid(points: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """``points`` noise levels from ``sigma_max`` down to ``sigma_min`` (EDM's spacing, Karras et al. 2022),
    descending, no trailing 0: the discretisation both methods train on."""
    return karras_sigmas(points, sigma_min, sigma_max, rho)[:-1]


def student_sigmas(grid: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``steps``-step sampling grid taken from ``grid`` (every ``len(grid) / steps``-th level), ending in 0.
    Nested: the ``2 k``-step grid holds the ``k``-step one (progressive distillation needs that)."""
    stride = len(grid) // steps
    return torch.cat([grid[::stride][:steps], grid.new_zeros(1)])


def boundary_scalings(sigma: torch.Tensor, sigma_min: float, sigma_data: float = 0.5):
    """``c_skip`` and ``c_out`` of a consistency model (Song et al. 2023, Appendix C): ``c_skip(sigma_min) = 1``
    and ``c_out(sigma_min) = 0``, so ``f(x, sigma_min) = x`` holds exactly, whatever the network outputs."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sd2).sqrt()
    return c_skip, c_out


def consistency_function(denoiser: Denoiser, sigma_min: float, sigma_data: float = 0.5) -> Denoiser:
    """``f(x, sigma) = c_skip x + c_out F(x, sigma)`` for any teacher parametrisation.

    ``F`` is read off the denoiser as EDM's preconditioned network output, ``D = c_skip^EDM x + c_out^EDM F``
    (Karras et al. 2022), so that a student initialised from the teacher starts as the teacher's denoiser
    (exactly so for an EDM teacher as ``sigma_min -> 0``, as in Song et al.'s initialisation from EDM), and
    the boundary condition holds by construction: ``f = c_skip x + (c_out / c_out^EDM)(D - c_skip^EDM x)``.
    """
    sd2 = sigma_data**2

    def f(x, sigma):
        sigma = sigma.float()
        c_skip, c_out = boundary_scalings(sigma, sigma_min, sigma_data)
        edm_skip = sd2 / (sigma**2 + sd2)
        edm_out = sigma * sigma_data / (sigma**2 + sd2).sqrt()
        d = denoiser(x, sigma)
        return _b(c_skip, x) * x + _b(c_out / edm_out, x) * (d - _b(edm_skip, x) * x)

    return f


def ode_step(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
             solver: str = "heun") -> torch.Tensor:
    """One step of the probability-flow ODE ``dx/dsigma = (x - D) / sigma`` from ``sigma`` to ``sigma_next``
    (per-sample vectors, both > 0): Euler (= deterministic DDIM in this view) or Heun (EDM's 2nd order)."""
    d = (x - denoiser(x, sigma)) / _b(sigma, x)
    h = _b(sigma_next - sigma, x)
    x_next = x + h * d
    if solver == "euler":
        return x_next
    d2 = (x_next - denoiser(x_next, sigma_next)) / _b(sigma_next, x)
    return x + h * (d + d2) / 2


def consistency_pair(teacher: Denoiser, x0: torch.Tensor, noise: torch.Tensor, grid: torch.Tensor,
                     index: torch.Tensor, solver: str = "heun"):
    """Consistency distillation's pair (Song et al. 2023, Algorithm 2): ``x = x0 + sigma_hi z`` and its
    neighbour ``x_hat`` one teacher ODE step lower, at ``sigma_lo``; ``index`` picks the adjacent levels
    ``grid[index] > grid[index + 1]``. Returns ``(x, sigma_hi, x_hat, sigma_lo)``."""
    sigma_hi, sigma_lo = grid[index].to(x0.device), grid[index + 1].to(x0.device)
    x = x0 + _b(sigma_hi, x0) * noise
    with torch.no_grad():
        x_hat = ode_step(teacher, x, sigma_hi, sigma_lo, solver)
    return x, sigma_hi, x_hat, sigma_lo


def consistency_distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Per-sample distance ``d(a, b)``: mean squared error, or the pseudo-Huber metric of improved consistency
    training (Song & Dhariwal 2023, ``c = 0.00054 sqrt(dim)``)."""
    diff = (a.float() - b.float()).flatten(1)
    if kind == "l2":
        return diff.pow(2).mean(1)
    c = 0.00054 * diff.shape[1] ** 0.5
    return ((diff.pow(2).sum(1) + c**2).sqrt() - c) / diff.shape[1] ** 0.5


def progressive_target(teacher: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_mid: torch.Tensor,
                       sigma_next: torch.Tensor) -> torch.Tensor:
    """Progressive distillation's target (Salimans & Ho 2022, Algorithm 2): the denoised estimate ``x_tilde``
    for which one deterministic DDIM step ``sigma -> sigma_next`` lands where two teacher DDIM steps
    ``sigma -> sigma_mid -> sigma_next`` land. ``sigma_next`` may be 0 (then ``x_tilde`` is that end point)."""
    with torch.no_grad():
        x_mid = ode_step(teacher, x, sigma, sigma_mid, "euler")
        x_end = ode_step(teacher, x_mid, sigma_mid, sigma_next, "euler")  # an Euler step to 0 lands on D
        ratio = _b(sigma_next / sigma, x)
        return (x_end - ratio * x) / (1 - ratio)
