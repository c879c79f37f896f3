"""Cartesian MRI forward models ``y = M F (S x)`` as ``LinearOperator``s; coil sensitivities from the centre.

Shapes: images ``(B, H, W)`` complex; single-coil k-space ``(B, H, W)``; multi-coil k-space ``(B, C, H, W)``;
masks broadcast to the k-space (``(B or 1, [1,] H or 1, W)``). The FFT is orthonormal, so the single-coil
operator has ``A A^H = M`` and its data-consistency step is the exact projection onto the measured lines.
"""

from __future__ import annotations

import torch
from monai.apps.reconstruction.networks.nets.utils import sensitivity_map_expand, sensitivity_map_reduce

from src.domains.mri.fft import fft2c, ifft2c, rss
from src.errors import DataError
from src.inverse.operators import LinearOperator

from .masks import center_region, centre_hann_window


class SingleCoilMRI(LinearOperator):
    def __init__(self, mask: torch.Tensor):
        self.mask = mask.bool()

    def forward(self, x):
        return fft2c(x) * self.mask

    def adjoint(self, y):
        return ifft2c(y * self.mask)

    def data_consistency(self, x0, y, iters: int = 5):
        # closed form of the CG step (one CG iteration gives the same result, since A A^H is a projection)
        return ifft2c(torch.where(self.mask, y, fft2c(x0)))

    def zero_filled(self, y):
        return ifft2c(y * self.mask).abs()


class MultiCoilMRI(LinearOperator):
    """Coil images ``S_c x``, Fourier transformed and masked; ``sens`` is ``(B, C, H, W)`` complex."""

    def __init__(self, mask: torch.Tensor, sens: torch.Tensor):
        self.mask = mask.bool()
        if self.mask.ndim == sens.ndim - 1:
            self.mask = self.mask.unsqueeze(-3)  # broadcast over coils
        self.sens = torch.view_as_real(sens.contiguous())

    def forward(self, x):
        coil_k = sensitivity_map_expand(torch.view_as_real(x.unsqueeze(1).contiguous()), self.sens)
        return torch.view_as_complex(coil_k.contiguous()) * self.mask

    def adjoint(self, y):
        img = sensitivity_map_reduce(torch.view_as_real((y * self.mask).contiguous()), self.sens)
        return torch.view_as_complex(img.contiguous()).squeeze(1)

    def zero_filled(self, y):
        return rss(ifft2c(y * self.mask), coil_dim=1)


def estimate_sensitivities(kspace: torch.Tensor, mask_1d: torch.Tensor, min_lines: int = 8) -> torch.Tensor:
    """Coil sensitivities from the fully sampled centre: low-resolution coil images over their RSS.

    The centre columns are Hann-windowed to limit ringing, then ``S_c = I_c / sqrt(sum |I_c|^2)``, so
    ``sum_c |S_c|^2 = 1`` and ``||A|| <= 1`` (the classical auto-calibration estimate, e.g. the initial
    maps of fastMRI's E2E-VarNet before its learned refinement).
    """
    lo, hi = center_region(mask_1d)
    if hi - lo < min_lines:
        raise DataError(f"Multi-coil reconstruction estimates coil sensitivities from the fully sampled "
                         f"k-space centre, but only {hi - lo} centre columns are sampled (at least "
                         f"{min_lines} needed); use data with a larger fully sampled centre (e.g. "
                         "--center-fraction 0.08).")
    window = centre_hann_window(mask_1d, kspace.real.dtype, kspace.device)
    low = ifft2c(kspace * window)
    norm = rss(low, coil_dim=1).unsqueeze(1)
    return low / norm.clamp_min(1e-6 * float(norm.max().clamp_min(1e-30)))
