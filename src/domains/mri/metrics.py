"""Sample quality for MRI volumes and slices, with no pretrained network.

``MRIMetrics()(generated, real)`` takes two ``(N, C, *spatial)`` tensors in [-1, 1] (2D or 3D, C=1 magnitude
or C=2 real/imaginary) and returns:

- ``msssim_diversity``: mean MS-SSIM over all pairs of generated samples (MONAI's MultiScaleSSIMMetric on
  the magnitude). Lower is more diverse; near 1 means the samples are copies of each other (mode collapse).
- ``msssim_diversity_real``: the same over the real items, the value to compare with.
- ``frechet_stats``: Frechet distance between Gaussians fitted to simple per-item statistics of generated
  and real items (intensity histogram and percentiles, head fraction, gradient and Laplacian energy at two
  scales), each statistic standardised by its spread over the real items, with diagonal covariances,
  divided by the number of statistics. 0 when the statistics match; about 1 when each statistic is off by
  one real standard deviation (or generated items do not vary). A coarse check of intensity and texture,
  not a perceptual score; noisy with few items.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from monai.metrics import MultiScaleSSIMMetric

from src.domains.common import frechet_distance
from src.errors import ConfigError

from .transforms import sample_magnitude

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(size: int, kernel_size: int) -> tuple[float, ...]:
    """The standard MS-SSIM weights, truncated to the scales the smallest side allows (MONAI's size rule)."""
    for n in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if size // max(1, n - 1) ** 2 > kernel_size - 1:
            w = MS_SSIM_WEIGHTS[:n]
            return tuple(v / sum(w) for v in w)
    raise ConfigError(f"Items of side {size} are too small for MS-SSIM with kernel size {kernel_size}.")


def item_statistics(mag: torch.Tensor, head_threshold: float = 0.1, bins: int = 12) -> torch.Tensor:
    """Per-item feature vectors ``(N, F)`` from ``(N, 1, *spatial)`` magnitudes in [0, 1]."""
    n, spatial = mag.shape[0], mag.ndim - 2
    flat = mag.flatten(1)
    hist = torch.stack([torch.histc(f, bins=bins, min=0.0, max=1.0) for f in flat]) / flat.shape[1]
    q = torch.quantile(flat, torch.tensor([0.5, 0.9, 0.99]), dim=1).T
    feats = [
        hist,
        q,
        flat.mean(1, keepdim=True),
        flat.std(1, keepdim=True),
        (flat > head_threshold).float().mean(1, keepdim=True),
    ]
    pool = F.avg_pool3d if spatial == 3 else F.avg_pool2d
    x = mag
    for _ in range(2):  # texture at full and half resolution
        grads = torch.stack([torch.diff(x, dim=d).abs().flatten(1).mean(1) for d in range(2, x.ndim)], 1)
        lap = sum(torch.diff(x, n=2, dim=d).abs().flatten(1).mean(1) for d in range(2, x.ndim))
        feats += [grads.mean(1, keepdim=True), lap[:, None]]
        x = pool(x, kernel_size=2)
    return torch.cat(feats, 1).reshape(n, -1).double()


class MRIMetrics:
    """Callable ``(generated, real) -> dict[str, float]`` (see the module docstring)."""

    def __init__(self, kernel_size: int = 5, kernel_sigma: float = 1.0, max_pairs: int = 28):
        self.kernel_size, self.kernel_sigma, self.max_pairs = kernel_size, kernel_sigma, max_pairs

    def diversity(self, mag: torch.Tensor) -> float:
        """Mean MS-SSIM over (up to ``max_pairs``) pairs of items; nan with fewer than two items."""
        pairs = list(itertools.combinations(range(mag.shape[0]), 2))[: self.max_pairs]
        if not pairs:
            return math.nan
        i, j = (list(t) for t in zip(*pairs))
        spatial = mag.ndim - 2
        metric = MultiScaleSSIMMetric(
            spatial_dims=spatial,
            data_range=1.0,
            kernel_size=self.kernel_size,
            kernel_sigma=self.kernel_sigma,
            weights=ms_ssim_scales(min(mag.shape[2:]), self.kernel_size),
        )
        return float(metric(mag[i], mag[j]).mean())

    def frechet(self, gen: torch.Tensor, real: torch.Tensor) -> float:
        if gen.shape[0] < 2 or real.shape[0] < 2:
            return math.nan
        fg, fr = item_statistics(gen), item_statistics(real)
        scale = fr.std(0).clamp(min=1e-3)  # standardise by the real spread; floor for constant statistics
        fg, fr = fg / scale, fr / scale
        # diagonal covariances: a full one needs far more items than a validation draws (biased, singular)
        d = frechet_distance(fg.mean(0), torch.diag(fg.var(0)), fr.mean(0), torch.diag(fr.var(0)))
        return d / fg.shape[1]

    def __call__(self, generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        gen, ref = sample_magnitude(generated), sample_magnitude(real)
        return {
            "msssim_diversity": self.diversity(gen),
            "msssim_diversity_real": self.diversity(ref),
            "frechet_stats": self.frechet(gen, ref),
        }
