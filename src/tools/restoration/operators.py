"""Measurement operators that src.inverse lacks: identity (denoising), an ideal low-pass (bandwidth
extension) and clipping (declipping), plus the box masks of inpainting.

Each is a ``LinearOperator`` over ``(B, C, *spatial)``, so the posterior sampler of src.inverse uses them as
it uses ``Inpainting`` and ``Downsampling``.
"""

from __future__ import annotations

import numpy as np
import torch

from src.inverse import Inpainting, LinearOperator


class Identity(LinearOperator):
    """``y = x`` (with noise: denoising). ``A A^H = I``, so the hard projection returns ``y`` itself."""

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    def data_consistency(self, x0, y, iters: int = 5):
        return y.clone()


def lowpass_response(length: int, cutoff: float, device=None) -> torch.Tensor:
    """rFFT-bin gains of an ideal low-pass: 1 up to ``cutoff`` (a fraction of Nyquist, in (0, 1)), else 0."""
    freqs = torch.fft.rfftfreq(length, d=0.5, device=device)  # 0 .. 1 = Nyquist
    return (freqs <= cutoff).to(torch.float32)


class LowPass(LinearOperator):
    """Ideal (brick-wall) low-pass along the last axis, by the FFT: an orthogonal projection, self-adjoint.

    ``cutoff`` is a fraction of the Nyquist frequency. Bandwidth extension keeps the band below it from the
    recording and draws the band above it from the prior.
    """

    def __init__(self, cutoff: float):
        self.cutoff = float(cutoff)

    def forward(self, x):
        gain = lowpass_response(x.shape[-1], self.cutoff, x.device)
        return torch.fft.irfft(torch.fft.rfft(x, dim=-1) * gain, n=x.shape[-1], dim=-1)

    def adjoint(self, y):
        return self.forward(y)

    def data_consistency(self, x0, y, iters: int = 5):
        # A is an orthogonal projection: x0 - A x0 + A y is the closest point with A x = A y
        return x0 - self.forward(x0) + self.forward(y)


class Declipping(Inpainting):
    """Clipping at ``+-level``: samples below the level are measured exactly (an ``Inpainting`` of them); a
    clipped sample is known only to lie at or beyond the level with the recorded sign, so the data step also
    projects those samples onto that set (Adler et al., IEEE TASLP 2012, the consistency set of declipping).
    """

    def __init__(self, clipped: torch.Tensor, sign: torch.Tensor, level: float):
        super().__init__(~clipped.bool())
        self.clipped = clipped.bool()
        self.sign = sign
        self.level = float(level)

    def data_consistency(self, x0, y, iters: int = 5):
        beyond = torch.maximum(x0 * self.sign, torch.full_like(x0, self.level)) * self.sign
        return torch.where(self.mask, y, torch.where(self.clipped, beyond, x0))


def clip(x: np.ndarray | torch.Tensor, level: float):
    """Hard clipping at ``+-level``, what an overdriven recorder does."""
    return x.clip(-level, level)


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """Boolean ``(H, W)``, True inside each ``(x, y, width, height)`` box (pixels from the top-left corner)."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        mask[max(y, 0):y + h, max(x, 0):x + w] = True
    return mask
