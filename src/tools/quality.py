"""Image quality the fastMRI way (fastmri/evaluate.py): per volume, data range = the reference's maximum.

* NMSE = ||ref - x||^2 / ||ref||^2 over the volume.
* PSNR = 10 log10(max(ref)^2 / MSE) over the volume.
* SSIM = the mean over slices of scikit-image's default SSIM (7x7 uniform window, K1 = 0.01, K2 = 0.03,
  sample covariance, border of 3 pixels excluded) with ``data_range = max(ref)`` of the whole volume.
  MONAI's SSIMMetric uses the population covariance, so it differs slightly; scikit-image is not a
  dependency, hence the few lines below.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import DataError


def _volume(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise DataError(f"Metrics need a volume (slices, H, W) or a slice (H, W), got {tuple(t.shape)}.")
    return t


def nmse(ref, x) -> float:
    r, x = _volume(ref), _volume(x)
    return float(((r - x) ** 2).sum() / (r**2).sum())


def psnr(ref, x, data_range: float | None = None) -> float:
    r, x = _volume(ref), _volume(x)
    peak = float(r.max()) if data_range is None else data_range
    mse = float(((r - x) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def ssim(ref, x, data_range: float | None = None, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> float:
    r, x = _volume(ref), _volume(x)
    peak = float(r.max()) if data_range is None else data_range
    r, x = r[:, None], x[:, None]
    kernel = torch.full((1, 1, win_size, win_size), 1.0 / win_size**2, dtype=torch.float64)
    n = win_size**2
    cov_norm = n / (n - 1)

    def mean(t):  # valid convolution: only windows fully inside the image, like skimage's border crop
        return F.conv2d(t, kernel)

    ux, uy = mean(r), mean(x)
    vx = cov_norm * (mean(r * r) - ux * ux)
    vy = cov_norm * (mean(x * x) - uy * uy)
    vxy = cov_norm * (mean(r * x) - ux * uy)
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.flatten(1).mean(1).mean())


def all_metrics(ref, x) -> dict[str, float]:
    return {"psnr": psnr(ref, x), "ssim": ssim(ref, x), "nmse": nmse(ref, x)}
