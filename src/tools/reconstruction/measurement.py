"""Undersampled k-space checked and organised for reconstruction, with the zero-filled and CS baselines.

``as_measurement`` turns what a user hands over (numpy or torch, complex, with or without a mask) into
tensors with fixed shapes, or a one-sentence error saying what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from src.domains.mri.fft import fft2c, ifft2c, rss
from src.domains.mri.transforms import reference_intensity
from src.errors import DataError
from src.inverse.operators import LinearOperator
from src.inverse.tv import tv_reconstruct

from .masks import columns_from_kspace, undersampling_mask
from .operators import MultiCoilMRI, SingleCoilMRI, estimate_sensitivities


@dataclass
class Measurement:
    kspace: torch.Tensor   # (S, H, W) single-coil or (S, C, H, W) multi-coil, complex64, 0 where not sampled
    mask: torch.Tensor     # (S or 1, H or 1, W) bool

    @property
    def multicoil(self) -> bool:
        return self.kspace.ndim == 4

    @property
    def num_slices(self) -> int:
        return self.kspace.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kspace.shape[-2:])

    @property
    def acceleration(self) -> float:
        m = self.mask.expand(self.mask.shape[0], *self.shape)
        return float(m.numel() / max(int(m.sum()), 1))

    def batch(self, idx: list[int], device) -> tuple[LinearOperator, torch.Tensor]:
        """The forward operator and measured data for slices ``idx`` on ``device``."""
        y = self.kspace[idx].to(device)
        mask = (self.mask[idx] if self.mask.shape[0] > 1 else self.mask).to(device)
        if not self.multicoil:
            return SingleCoilMRI(mask), y
        columns = mask.all(dim=-2).all(dim=0)  # fully sampled columns: the auto-calibration region
        return MultiCoilMRI(mask, estimate_sensitivities(y, columns)), y


def as_measurement(kspace, mask=None, source: str = "k-space") -> Measurement:
    """Validate and normalise k-space ``(H, W)``, ``(S, H, W)`` or ``(S, C, H, W)`` and an optional mask.

    The mask may be ``(W,)`` (one entry per phase-encoding column, fastMRI), ``(H, W)`` or ``(S, H, W)``;
    non-zero means sampled. Without a mask, the columns with any non-zero sample count as sampled.
    """
    k = torch.as_tensor(np.asarray(kspace) if not isinstance(kspace, torch.Tensor) else kspace)
    if not k.is_complex():
        raise DataError(f"{source} is real-valued ({k.dtype}); k-space must be complex (e.g. complex64). "
                         "For a magnitude image, simulate k-space with --simulate (or fft2c in Python).")
    if k.ndim == 2:
        k = k[None]
    if k.ndim not in (3, 4):
        raise DataError(f"{source} has shape {tuple(k.shape)}; expected (H, W), (slices, H, W) single-coil "
                         "or (slices, coils, H, W) multi-coil.")
    k = k.to(torch.complex64)
    if not torch.isfinite(torch.view_as_real(k)).all():
        raise DataError(f"{source} contains NaN or infinite values; the file is damaged or wrongly written.")
    s, h, w = k.shape[0], k.shape[-2], k.shape[-1]
    if mask is None:
        m = columns_from_kspace(k).reshape(1, 1, w)
    else:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        m = m.squeeze() if m.numel() > 1 else m.reshape(1)
        if m.ndim == 1 and m.shape[0] == w:
            m = m.reshape(1, 1, w)
        elif m.ndim == 2 and tuple(m.shape) == (h, w):
            m = m[None]
        elif m.ndim == 3 and tuple(m.shape) == (s, h, w):
            pass
        else:
            raise DataError(f"The mask has shape {tuple(np.asarray(mask).shape)} but the k-space slices are "
                             f"{h}x{w} ({s} slices); the mask must have {w} entries (one per phase-encoding "
                             f"column, the last k-space axis), or shape ({h}, {w}) or ({s}, {h}, {w}).")
        m = m != 0
    if not bool(m.any()):
        raise DataError(f"The mask of {source} samples nothing; check it (non-zero entries = sampled).")
    km = k * (m.unsqueeze(1) if k.ndim == 4 else m)
    return Measurement(kspace=km, mask=m)


def undersample(kspace, kind: str, acceleration: float, center_fraction: float, seed: int | None = 0,
                source: str = "k-space") -> Measurement:
    """Retrospective undersampling of fully sampled k-space with a fastMRI mask along the last axis."""
    k = torch.as_tensor(np.asarray(kspace) if not isinstance(kspace, torch.Tensor) else kspace)
    mask = undersampling_mask(kind, k.shape[-1], acceleration, center_fraction, seed)
    return as_measurement(k, mask, source=source)


def simulate_from_image(volume, kind: str, acceleration: float, center_fraction: float,
                        seed: int | None = 0) -> Measurement:
    """Single-coil k-space of a magnitude volume ``(S, H, W)`` (real image, zero phase), undersampled."""
    x = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    return undersample(fft2c(x.to(torch.complex64)), kind, acceleration, center_fraction, seed,
                       source="simulated k-space")


# ---- baselines ------------------------------------------------------------------------------------------
def zero_filled(meas: Measurement, batch_size: int = 16) -> np.ndarray:
    """Inverse FFT of the zero-filled k-space: magnitude (single-coil) or root-sum-of-squares (multi-coil)."""
    out = []
    for start in range(0, meas.num_slices, batch_size):
        idx = list(range(start, min(start + batch_size, meas.num_slices)))
        y = meas.kspace[idx]
        mask = meas.mask[idx] if meas.mask.shape[0] > 1 else meas.mask
        mask = mask.bool().unsqueeze(1) if meas.multicoil else mask.bool()  # (S, 1, H, W) over the coils
        coils = ifft2c(y * mask)  # no coil sensitivities needed (nor a calibration region)
        out.append(rss(coils, coil_dim=1) if meas.multicoil else coils.abs())
    return torch.cat(out).numpy()


def robust_max(image: np.ndarray | torch.Tensor, percentile: float = 99.5) -> float:
    """Intensity scale ``s`` of a volume, as the MRI domain computes it for training (a high percentile of the
    magnitude, insensitive to a few hot voxels); the maximum when that percentile is 0."""
    mag = torch.as_tensor(np.asarray(image)).abs().float()
    value = reference_intensity(mag[None], complex_valued=False, percentile=percentile)
    return value if value > 0 else float(mag.max()) or 1.0


def compressed_sensing(meas: Measurement, lam: float = 0.01, iters: int = 300, batch_size: int = 16,
                       device: str | torch.device = "cpu", percentile: float = 99.5) -> np.ndarray:
    """Total-variation regularised reconstruction (Lustig, Donoho & Pauly 2007; solved by Chambolle-Pock).

    The data are divided by the zero-filled volume's ``robust_max`` first, so ``lam`` is scale-free.
    """
    scale = robust_max(zero_filled(meas), percentile)
    out = []
    for start in range(0, meas.num_slices, batch_size):
        idx = list(range(start, min(start + batch_size, meas.num_slices)))
        op, y = meas.batch(idx, device)
        y = y / scale
        x = tv_reconstruct(op, y, op.adjoint(y), lam=lam, iters=iters)
        out.append((x.abs() * scale).cpu())
    return torch.cat(out).numpy()
