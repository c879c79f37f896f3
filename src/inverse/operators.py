"""Linear measurement operators ``y = A x`` with their adjoints, and the data-consistency step they share.

Images are tensors ``(B, *spatial)``, real or complex; every reduction is per batch item so a batch of
slices with different measurements is solved at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of <a, b> per batch item, shape ``(B,)``."""
    return (a.conj() * b).real.flatten(1).sum(1) if a.is_complex() else (a * b).flatten(1).sum(1)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def conjugate_gradient(apply, rhs: torch.Tensor, x: torch.Tensor, iters: int,
                       tol: float = 1e-10) -> torch.Tensor:
    """Solve ``apply(x) = rhs`` (Hermitian positive semi-definite) by CG from ``x``, per batch item.

    No library offers batched CG over a matrix-free complex operator in torch, hence these few lines.
    """
    r = rhs - apply(x)
    p = r.clone()
    rs = batch_dot(r, r)
    for _ in range(iters):
        ap = apply(p)
        denom = batch_dot(p, ap)
        alpha = torch.where(denom > tol, rs / denom.clamp_min(tol), torch.zeros_like(rs))
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * ap
        rs_new = batch_dot(r, r)
        beta = torch.where(rs > tol, rs_new / rs.clamp_min(tol), torch.zeros_like(rs))
        p = r + _bcast(beta, p) * p
        rs = rs_new
    return x


class LinearOperator:
    """A linear measurement model. Subclasses define ``forward`` and ``adjoint``; the rest follows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))

    def data_consistency(self, x0: torch.Tensor, y: torch.Tensor, iters: int = 5) -> torch.Tensor:
        """Move ``x0`` towards ``{x : A x = y}``: CG on the normal equations started at ``x0``.

        This is the data step of the Decomposed Diffusion Sampler (Chung, Lee & Ye, ICLR 2024): a few CG
        iterations from the denoised estimate stay in the Krylov subspace around it. When ``A A^H = I``
        one iteration is the exact projection ``x0 + A^H (y - A x0)`` of DDNM (Wang et al., ICLR 2023).
        """
        return conjugate_gradient(self.normal, self.adjoint(y), x0, iters)

    def norm_estimate(self, like: torch.Tensor, iters: int = 20) -> float:
        """Largest singular value of ``A`` by power iteration on ``A^H A`` (for step sizes)."""
        g = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)
        s = 0.0
        for _ in range(iters):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (v.ndim - 1)))
            w = self.normal(v)
            s = float(batch_dot(v, w).max())
            v = w
        return max(s, 0.0) ** 0.5


class Inpainting(LinearOperator):
    """Keep the pixels where ``mask`` is true (measurements stored in image layout, zeros elsewhere)."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask.bool()

    def forward(self, x):
        return x * self.mask

    def adjoint(self, y):
        return y * self.mask

    def data_consistency(self, x0, y, iters: int = 5):
        return torch.where(self.mask, y, x0)


class Downsampling(LinearOperator):
    """Average ``factor x factor`` blocks of a real image ``(B, C, H, W)`` (super-resolution)."""

    def __init__(self, factor: int):
        self.factor = int(factor)

    def forward(self, x):
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y):
        return F.interpolate(y, scale_factor=self.factor, mode="nearest") / self.factor**2
