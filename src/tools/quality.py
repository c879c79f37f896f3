"""Image quality against a reference, one definition for every tool: PSNR, SSIM (scikit-image) and NMSE.

SSIM is scikit-image's ``structural_similarity`` because fastMRI's evaluation (fastmri/evaluate.py) uses it:
7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, border of 3 pixels excluded, computed per 2D
slice (or per colour channel) and averaged. MONAI's SSIMMetric uses the population covariance, so its values
differ slightly from the published fastMRI numbers. The data range defaults to the reference's maximum over
the whole volume (fastMRI); restoration scores images in [0, 1] with ``data_range=1``.

* NMSE = ||ref - x||^2 / ||ref||^2 over the volume.
* PSNR = 10 log10(data_range^2 / MSE) over the volume (infinite for an exact match).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from src.errors import DataError


def _stack(x) -> np.ndarray:
    """``(slices or channels, H, W)`` float64 from a 2D or 3D array."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataError(f"Metrics need a volume (slices, H, W) or a slice (H, W), got {tuple(a.shape)}.")
    return a


def _range(ref: np.ndarray, data_range: float | None) -> float:
    return float(ref.max()) if data_range is None else float(data_range)


def nmse(ref, x) -> float:
    r, x = _stack(ref), _stack(x)
    return float(((r - x) ** 2).sum() / (r**2).sum())


def psnr(ref, x, data_range: float | None = None) -> float:
    r, x = _stack(ref), _stack(x)
    mse = float(((r - x) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(_range(r, data_range) ** 2 / mse))


def ssim(ref, x, data_range: float | None = None, win_size: int = 7) -> float:
    """Mean over the leading axis (slices, or colour channels) of scikit-image's 2D SSIM; the window shrinks to
    the largest odd size (at least 3) that fits an image smaller than ``win_size``."""
    r, x = _stack(ref), _stack(x)
    peak = _range(r, data_range)
    win = max(3, min(win_size, *(n if n % 2 else n - 1 for n in r.shape[1:])))
    return float(np.mean([structural_similarity(a, b, data_range=peak, win_size=win) for a, b in zip(r, x)]))


def all_metrics(ref, x) -> dict[str, float]:
    """fastMRI's three numbers of one volume: data range = the reference's maximum."""
    return {"psnr": psnr(ref, x), "ssim": ssim(ref, x), "nmse": nmse(ref, x)}
