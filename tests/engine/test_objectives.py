"""Objectives: a perfect network makes every denoiser return x0 exactly; weights and densities as published."""

import math

import pytest
import torch

from src.diffusion.objectives import (
    DDPMObjective,
    EDMObjective,
    FlowMatchingObjective,
    VEObjective,
    build_objective,
)
from src.diffusion.schedules import karras_sigmas, lognormal_sigma

torch.manual_seed(0)
X0 = torch.randn(6, 2, 5, 5) * 0.5
NOISE = torch.randn(6, 2, 5, 5)
SIGMA = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 40.0])


def b(v):
    return v.reshape(-1, 1, 1, 1)


def perfect_net(obj):
    """A network that outputs the exact training target for (X0, NOISE) at the noise level it is given."""

    def net(x, noise_level, cond):
        if isinstance(obj, DDPMObjective):
            sig = obj.schedule.t_to_sigma(noise_level * obj.T)
            abar = 1 / (1 + sig**2)
            a, s = b(abar.sqrt()), b((1 - abar).sqrt())
            return {"eps": NOISE, "v": a * NOISE - s * X0, "x0": X0}[obj.prediction]
        if isinstance(obj, EDMObjective):
            sig = b(torch.exp(noise_level * 4))
            c_skip, c_out, _, _ = obj.precond(sig)
            return (X0 - c_skip * (X0 + sig * NOISE)) / c_out
        if isinstance(obj, FlowMatchingObjective):
            return NOISE - X0
        return NOISE  # VE: the network predicts eps

    return net


@pytest.mark.parametrize("obj", [DDPMObjective(prediction="eps"), DDPMObjective(prediction="v"),
                                 DDPMObjective(prediction="x0", schedule="cosine"), EDMObjective(),
                                 FlowMatchingObjective(), VEObjective()], ids=lambda o: type(o).__name__)
def test_perfect_network_denoises_exactly(obj):
    sigma = SIGMA
    if isinstance(obj, DDPMObjective):  # stay on the schedule's sigma range
        sigma = obj.schedule.t_to_sigma(torch.tensor([3.0, 50.0, 200.0, 400.0, 700.0, 990.0]))
    x = X0 + b(sigma) * NOISE
    den = obj.denoiser(perfect_net(obj))(x, sigma)
    torch.testing.assert_close(den, X0, atol=2e-3 * max(1.0, float(sigma.max()) / 10), rtol=1e-3)


@pytest.mark.parametrize("obj", [DDPMObjective(), DDPMObjective(prediction="v", min_snr_gamma=5.0),
                                 EDMObjective(), FlowMatchingObjective(time_density="uniform"), VEObjective()],
                         ids=lambda o: type(o).__name__)
def test_loss_is_per_sample_positive_and_finite(obj):
    u = torch.rand(6)
    loss = obj.loss(lambda x, nl, c: torch.zeros_like(x), X0, u, NOISE)
    assert loss.shape == (6,) and torch.isfinite(loss).all() and (loss > 0).all()


def test_min_snr_weights_match_paper():
    """Min-SNR-gamma: eps-loss weight min(snr, g)/snr, v-loss weight min(snr, g)/(snr + 1)."""
    eps = DDPMObjective(prediction="eps", min_snr_gamma=5.0)
    plain = DDPMObjective(prediction="eps")
    v = DDPMObjective(prediction="v", min_snr_gamma=5.0)
    plain_v = DDPMObjective(prediction="v")
    u = torch.tensor([0.001, 0.01, 0.3, 0.9])
    x0, noise = X0[:4], NOISE[:4]
    zero = lambda x, nl, c: torch.zeros_like(x)  # noqa: E731
    t = (u * 1000).long()
    abar = eps.schedule.alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    ratio = eps.loss(zero, x0, u, noise) / plain.loss(zero, x0, u, noise)
    torch.testing.assert_close(ratio, snr.clamp(max=5.0) / snr)
    ratio_v = v.loss(zero, x0, u, noise) / plain_v.loss(zero, x0, u, noise)
    torch.testing.assert_close(ratio_v, snr.clamp(max=5.0) / (snr + 1))


def test_edm_density_and_grid():
    med = lognormal_sigma(torch.tensor([0.5]), -1.2, 1.2)
    assert math.isclose(med.item(), math.exp(-1.2), rel_tol=1e-5)
    q = lognormal_sigma(torch.tensor([0.8413447]), -1.2, 1.2)  # one standard deviation up
    assert math.isclose(q.item(), math.exp(0.0), rel_tol=1e-3)
    s = karras_sigmas(18)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert (s[:-1].diff() < 0).all()


def test_build_objective_rejects_unknown_family_and_options():
    with pytest.raises(ValueError, match="Unknown diffusion.family 'nope'"):
        build_objective({"family": "nope"})
    with pytest.raises(ValueError, match="Unknown key diffusion.sigma_dat for diffusion.family=edm; .*sigma_data"):
        build_objective({"family": "edm", "sigma_dat": 1.0})
    assert isinstance(build_objective({"family": "flow", "sampler": "euler", "steps": 4}), FlowMatchingObjective)
