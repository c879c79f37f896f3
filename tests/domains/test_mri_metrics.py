"""fastMRI metrics: closed forms for PSNR/NMSE, and SSIM against a window-by-window scikit-image formula."""

import math

import numpy as np
import pytest

from src.tools.quality import all_metrics, nmse, psnr, ssim


def skimage_ssim_bruteforce(ref, x, data_range, win=7):
    """scikit-image's structural_similarity defaults, window by window (uniform window, sample covariance)."""
    k1, k2 = 0.01, 0.03
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vals = []
    for i in range(ref.shape[0] - win + 1):
        for j in range(ref.shape[1] - win + 1):
            a, b = ref[i:i + win, j:j + win].ravel(), x[i:i + win, j:j + win].ravel()
            ma, mb = a.mean(), b.mean()
            va, vb = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - ma) * (b - mb)).sum() / (a.size - 1)
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


@pytest.fixture
def volumes():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 2, (3, 16, 20))
    return ref, ref + rng.normal(0, 0.1, ref.shape)


def test_psnr_and_nmse_closed_forms(volumes):
    ref, x = volumes
    mse = ((ref - x) ** 2).mean()
    assert psnr(ref, x) == pytest.approx(10 * math.log10(ref.max() ** 2 / mse), rel=1e-9)
    assert nmse(ref, x) == pytest.approx(((ref - x) ** 2).sum() / (ref**2).sum(), rel=1e-9)
    assert psnr(ref, x, data_range=1.0) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-9)


def test_ssim_matches_skimage_formula_per_slice_with_volume_range(volumes):
    ref, x = volumes
    expected = np.mean([skimage_ssim_bruteforce(ref[s], x[s], ref.max()) for s in range(ref.shape[0])])
    assert ssim(ref, x) == pytest.approx(expected, rel=1e-6)


def test_metrics_of_a_perfect_and_a_worse_reconstruction(volumes):
    ref, x = volumes
    perfect = all_metrics(ref, ref)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["nmse"] == 0 and perfect["psnr"] == math.inf
    worse = ref + 3 * (x - ref)
    assert psnr(ref, worse) < psnr(ref, x) and ssim(ref, worse) < ssim(ref, x)
    assert nmse(ref, worse) > nmse(ref, x)


def test_metrics_reject_non_volumes():
    with pytest.raises(ValueError, match="volume"):
        psnr(np.zeros(5), np.zeros(5))
