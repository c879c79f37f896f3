"""MRI maths against independent definitions: fastMRI's FFT and mask functions, operator adjointness."""

import numpy as np
import pytest
import torch

from src.domains.mri.fft import fft2c, ifft2c, rss
from src.inverse.operators import Downsampling, Inpainting, LinearOperator, conjugate_gradient
from src.tools.reconstruction.masks import center_region, undersampling_mask
from src.tools.reconstruction.operators import MultiCoilMRI, SingleCoilMRI, estimate_sensitivities


def crandn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))


def vdot(a, b):
    return complex((a.conj() * b).sum())


# ---- FFT: fastMRI's fft2c / ifft2c are fftshift(fft2(ifftshift(x), norm="ortho")) over the last two axes
@pytest.mark.parametrize("shape", [(2, 6, 8), (1, 7, 5)])  # even and odd sizes shift differently
def test_fft2c_matches_fastmri_definition(shape):
    x = crandn(*shape)
    a = x.numpy()
    ref_k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    ref_x = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(a, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(fft2c(x).numpy(), ref_k, atol=1e-5)
    np.testing.assert_allclose(ifft2c(x).numpy(), ref_x, atol=1e-5)
    torch.testing.assert_close(ifft2c(fft2c(x)), x, atol=1e-5, rtol=1e-5)
    # orthonormal: energy is preserved
    assert abs(float(fft2c(x).abs().pow(2).sum() / x.abs().pow(2).sum()) - 1) < 1e-5


def test_fft2c_puts_dc_at_the_centre():
    k = fft2c(torch.ones(1, 8, 6, dtype=torch.complex64))
    assert k.abs().argmax().item() == 4 * 6 + 3  # the (H // 2, W // 2) entry, as fastMRI's centred FFT


def test_rss_is_root_sum_of_squares():
    coils = crandn(2, 4, 5, 5)
    torch.testing.assert_close(rss(coils, coil_dim=1), coils.abs().pow(2).sum(1).sqrt())


# ---- masks: fastMRI's RandomMaskFunc and EquispacedMaskFractionFunc, re-derived here with numpy
def fastmri_random(num_cols, acceleration, center_fraction, seed):
    rng = np.random.RandomState(seed)
    rng.randint(0, 1)  # choose_acceleration draws from the rng even with one (fraction, acceleration) pair
    num_low = round(num_cols * center_fraction)
    prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
    mask = rng.uniform(size=num_cols) < prob
    pad = (num_cols - num_low + 1) // 2
    mask[pad:pad + num_low] = True
    return mask


def fastmri_equispaced_fraction(num_cols, acceleration, center_fraction, seed):
    rng = np.random.RandomState(seed)
    rng.randint(0, 1)
    num_low = round(num_cols * center_fraction)
    mask = np.zeros(num_cols, dtype=bool)
    pad = (num_cols - num_low + 1) // 2
    mask[pad:pad + num_low] = True
    adjusted = (acceleration * (num_low - num_cols)) / (num_low * acceleration - num_cols)
    offset = rng.randint(0, high=round(adjusted))
    mask[np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.uint)] = True
    return mask


@pytest.mark.parametrize("num_cols,acc,cf,seed", [(368, 4, 0.08, 0), (320, 8, 0.04, 3), (64, 4, 0.08, 11)])
def test_masks_match_fastmri(num_cols, acc, cf, seed):
    rand = undersampling_mask("random", num_cols, acc, cf, seed).numpy()
    equi = undersampling_mask("equispaced", num_cols, acc, cf, seed).numpy()
    np.testing.assert_array_equal(rand, fastmri_random(num_cols, acc, cf, seed))
    np.testing.assert_array_equal(equi, fastmri_equispaced_fraction(num_cols, acc, cf, seed))
    num_low = round(num_cols * cf)
    for m in (rand, equi):
        lo, hi = center_region(torch.from_numpy(m))
        assert hi - lo >= num_low  # the centre is fully sampled (neighbouring lines may extend the run)
    assert abs(num_cols / equi.sum() - acc) / acc < 0.05  # equispaced-fraction hits the acceleration exactly


def test_masks_are_reproducible_and_seed_dependent():
    a = undersampling_mask("random", 256, 4, 0.08, 1)
    assert torch.equal(a, undersampling_mask("random", 256, 4, 0.08, 1))
    assert not torch.equal(a, undersampling_mask("random", 256, 4, 0.08, 2))


def test_mask_rejects_impossible_settings():
    with pytest.raises(ValueError, match="center-fraction"):
        undersampling_mask("equispaced", 64, 8, 0.2, 0)
    with pytest.raises(ValueError, match="Unknown mask"):
        undersampling_mask("radial", 64, 4, 0.08, 0)


# ---- operators
def _mask(w=16, acc=2, cf=0.25, seed=0):
    return undersampling_mask("random", w, acc, cf, seed).reshape(1, 1, w)


def test_single_coil_adjoint_and_projection():
    op = SingleCoilMRI(_mask())
    x, y = crandn(3, 12, 16, seed=1), crandn(3, 12, 16, seed=2)
    assert abs(vdot(op.forward(x), y) - vdot(x, op.adjoint(y))) < 1e-3 * abs(vdot(x, op.adjoint(y)))
    y = op.forward(crandn(3, 12, 16, seed=3))
    exact = op.data_consistency(x, y)
    torch.testing.assert_close(op.forward(exact), y, atol=1e-5, rtol=1e-5)  # measured samples honoured
    # the closed form equals one generic CG step (A A^H is a projection) and keeps unmeasured k-space
    generic = LinearOperator.data_consistency(op, x, y, iters=1)
    torch.testing.assert_close(generic, exact, atol=1e-5, rtol=1e-5)
    keep = ~op.mask.expand(3, 12, 16)
    torch.testing.assert_close(fft2c(exact)[keep], fft2c(x)[keep], atol=1e-5, rtol=1e-5)


def test_multi_coil_adjoint_sensitivities_and_consistency():
    mask = _mask()
    kspace = crandn(2, 4, 12, 16, seed=4)
    sens = estimate_sensitivities(kspace, mask.flatten(), min_lines=4)
    torch.testing.assert_close(sens.abs().pow(2).sum(1), torch.ones(2, 12, 16), atol=1e-4, rtol=1e-4)
    op = MultiCoilMRI(mask, sens)
    x, y = crandn(2, 12, 16, seed=5), crandn(2, 4, 12, 16, seed=6)
    lhs, rhs = vdot(op.forward(x), y), vdot(x, op.adjoint(y))
    assert abs(lhs - rhs) < 1e-3 * abs(rhs)
    assert op.norm_estimate(x) <= 1.0 + 1e-3  # sum |S_c|^2 = 1 and an orthonormal FFT
    # data consistency by CG: for data in the operator's range the residual vanishes
    truth = crandn(2, 12, 16, seed=7)
    y = op.forward(truth)
    x = op.data_consistency(torch.zeros_like(truth), y, iters=50)
    assert float((op.forward(x) - y).abs().norm() / y.abs().norm()) < 5e-3  # float32 CG on random coil maps


def test_sensitivities_need_a_fully_sampled_centre():
    mask = torch.zeros(32, dtype=torch.bool)
    mask[15:17] = True
    with pytest.raises(ValueError, match="centre columns"):
        estimate_sensitivities(crandn(1, 2, 8, 32), mask)


def test_generic_operators_are_adjoint_and_consistent():
    x, m = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8) > 0.5
    inp = Inpainting(m)
    y = inp.forward(torch.randn(2, 1, 8, 8))
    assert torch.equal(inp.data_consistency(x, y)[m], y[m])
    down = Downsampling(2)
    y = torch.randn(2, 1, 4, 4)
    assert abs(float((down.forward(x) * y).sum() - (x * down.adjoint(y)).sum())) < 1e-4
    x_dc = down.data_consistency(torch.zeros_like(x), y, iters=5)
    torch.testing.assert_close(down.forward(x_dc), y, atol=1e-5, rtol=1e-5)


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    spd = a @ a.T + 6 * torch.eye(6)
    b = torch.randn(1, 6, generator=g)
    x = conjugate_gradient(lambda v: v @ spd.T, b, torch.zeros_like(b), iters=20)
    torch.testing.assert_close(x @ spd.T, b, atol=1e-4, rtol=1e-4)


def test_tv_refine_keeps_the_data_and_trades_closeness_for_smoothness():
    """tv_refine: min 1/2 ||x - a||^2 + w TV(x) s.t. A x = y. The measured samples stay exact; w = 0 gives the
    projection of the anchor; a larger w gives a smoother image further from the anchor."""
    from src.inverse.tv import grad2d, tv_refine

    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(2, 24, 24, dtype=torch.complex64)
    truth[:, 6:18, 8:16] = 1.0
    mask = undersampling_mask("equispaced", 24, 4, 0.16, 0)
    op = SingleCoilMRI(mask)
    y = op.forward(truth)
    anchor = truth + 0.2 * torch.randn(truth.shape, generator=g, dtype=torch.complex64)

    def tv(x):
        return float(grad2d(x).abs().pow(2).sum(dim=1).sqrt().sum())

    out = {w: tv_refine(op, y, anchor, w) for w in (0.0, 0.05, 0.2)}
    for x in out.values():
        k = fft2c(x)
        assert float((k - y)[mask.expand_as(k)].abs().max()) < 1e-4 * float(y.abs().max())
    torch.testing.assert_close(out[0.0], op.data_consistency(anchor, y), atol=1e-5, rtol=0)
    dist = {w: float((x - anchor).abs().norm()) for w, x in out.items()}
    assert tv(out[0.0]) > tv(out[0.05]) > tv(out[0.2])
    assert dist[0.0] < dist[0.05] < dist[0.2]
    # the noise lives partly in the unmeasured part: removing it there brings the image closer to the truth
    assert float((out[0.05] - truth).abs().norm()) < float((out[0.0] - truth).abs().norm())
