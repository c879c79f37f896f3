"""Post-hoc EMA: the profile maths, reconstruction against an EMA run directly at that width, and the CLI."""

import numpy as np
import pytest
import torch
from torch import nn

from src.errors import ConfigError
from src.phema import (
    PowerFunctionEMA,
    exp_to_std,
    main,
    profile_inner_products,
    reconstruct,
    solve_coefficients,
    std_to_exp,
)


def test_exponent_and_width_round_trip():
    std = np.array([0.01, 0.05, 0.10, 0.2])
    assert np.allclose(exp_to_std(std_to_exp(std)), std)
    assert std_to_exp(0.05) > std_to_exp(0.10) > 0  # narrower profile: larger exponent


def test_inner_products_match_numerical_integration():
    tau = np.linspace(0, 1, 400001)[1:]

    def profile(t, std):
        g = std_to_exp(std)
        return np.where(tau <= t, (g + 1) * tau**g / t ** (g + 1), 0.0)

    for (ta, sa), (tb, sb) in [((0.6, 0.05), (1.0, 0.10)), ((1.0, 0.15), (0.8, 0.05)), ((0.9, 0.1), (0.9, 0.1))]:
        numeric = np.trapezoid(profile(ta, sa) * profile(tb, sb), tau)
        assert profile_inner_products(ta, sa, tb, sb) == pytest.approx(numeric, rel=2e-3)


def test_discrete_update_follows_the_power_profile():
    """After T updates, the EMA of a scalar trajectory is its tau^gamma-weighted mean."""
    net = nn.Linear(1, 1, bias=False)
    ema = PowerFunctionEMA(net, std=[0.1])
    values = torch.randn(2000, generator=torch.Generator().manual_seed(0)).cumsum(0)
    for v in values:
        net.weight.data.fill_(float(v))
        ema.update(net)
    g = ema.gammas[0]
    w = torch.arange(1, 2001, dtype=torch.float64) ** g
    expected = float((w * values.double()).sum() / w.sum())
    assert float(ema.emas[0].weight) == pytest.approx(expected, rel=1e-3, abs=1e-3)


def _train_tiny(steps, stds, snapshot_every=None, seed=0):
    """Noisy SGD on a small regression problem; power EMAs of the weights, snapshots as training writes them."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    ema = PowerFunctionEMA(net, std=stds)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    w_true = torch.randn(4, 1, generator=g)
    snaps = []
    for step in range(1, steps + 1):
        x = torch.randn(16, 4, generator=g)
        loss = (net(x) - x @ w_true).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(net)
        if snapshot_every and step % snapshot_every == 0:
            snaps.append({"step": step, "std": list(stds), "state_dicts": ema.full_state_dicts()})
    return net, ema, snaps


def _flat(sd):
    return torch.cat([v.flatten() for v in sd.values()])


@pytest.mark.parametrize("target", [0.15, 0.07])
def test_reconstruction_matches_an_ema_run_directly(target):
    steps = 2000
    net, _, snaps = _train_tiny(steps, [0.05, 0.10], snapshot_every=100)
    _, direct, _ = _train_tiny(steps, [target])
    recon, t = reconstruct(snaps, [target])
    assert t == steps
    got, want = _flat(recon[target]), _flat(direct.emas[0].state_dict())
    raw = _flat(net.state_dict())
    nearest = min((_flat(sd) - want).norm() for sd in snaps[-1]["state_dicts"])
    err = (got - want).norm()
    # far closer to the direct EMA than the raw weights or either stored profile are
    assert err < 0.01 * (raw - want).norm() and err < 0.02 * nearest, (err, (raw - want).norm(), nearest)


def test_coefficients_pick_a_stored_profile_exactly_and_sum_to_one():
    in_t = [100, 100, 200, 200]
    in_std = [0.05, 0.1, 0.05, 0.1]
    x = solve_coefficients(in_t, in_std, [200, 200], [0.1, 0.13])
    assert np.allclose(x.sum(0), 1)
    assert np.allclose(x[:, 0], [0, 0, 0, 1], atol=1e-6)


def test_bad_widths_are_config_errors():
    with pytest.raises(ConfigError, match="ema.phema.std"):
        PowerFunctionEMA(nn.Linear(1, 1), std=[0.5])
    with pytest.raises(SystemExit, match="--sigma-rel"):
        main(["somewhere", "--sigma-rel", "0.05,abc", "--out", "x"])


def test_cli_end_to_end_on_a_tiny_run(compose_cfg, tmp_path):
    from src.checkpoint import load_checkpoint
    from src.latent.stage import module_from_checkpoint
    from src.train import train

    run = tmp_path / "run"
    cfg = compose_cfg(["experiment=smoke", "logger=none", f"paths.output_dir={run}", "trainer.max_steps=6",
                       "trainer.val_check_interval=6", "sampling.every_n_steps=100", "checkpoint.every_n_steps=6",
                       "datamodule.num_workers=0", "datamodule.builtin_size=32", "datamodule.resolution=16",
                       "trainer.accelerator=cpu", "ema.phema={std:[0.05,0.10],snapshot_every:2}"])
    train(cfg)
    snaps = sorted((run / "checkpoints" / "phema").glob("phema-*.pt"))
    assert [p.name for p in snaps] == ["phema-0000002.pt", "phema-0000004.pt", "phema-0000006.pt"]
    assert not list((run / "checkpoints" / "phema").glob(".*tmp*"))
    out = tmp_path / "recon"
    main([str(run), "--sigma-rel", "0.05,0.15", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["phema-0.050.ckpt", "phema-0.150.ckpt"]
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    module, ckpt = module_from_checkpoint(out / "phema-0.050.ckpt")
    assert ckpt["phema"]["step"] == 6 and module.phema is None
    # sigma_rel 0.05 at the last step is a stored profile: rebuilt exactly
    for k, v in module.ema.module.state_dict().items():
        assert torch.allclose(v, last[f"phema.emas.0.{k}"], atol=1e-5), k
    wide, _ = module_from_checkpoint(out / "phema-0.150.ckpt")
    assert not torch.allclose(_flat(wide.ema.module.state_dict()), _flat(module.ema.module.state_dict()))
    assert torch.isfinite(wide.sample(1, steps=2)).all()


def test_profiles_resume_from_their_state_dict():
    """The profiles live in the module's state_dict: a restored copy goes on exactly as the original."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    a = PowerFunctionEMA(net, std=[0.05, 0.1])
    for _ in range(5):
        net.weight.data.add_(torch.randn_like(net.weight))
        a.update(net)
    b = PowerFunctionEMA(nn.Linear(3, 2), std=[0.05, 0.1])
    b.load_state_dict(a.state_dict())
    assert b.updates == 5
    for _ in range(3):
        net.weight.data.add_(torch.randn_like(net.weight))
        a.update(net)
        b.update(net)
    for ea, eb in zip(a.emas, b.emas):
        assert torch.equal(ea.weight, eb.weight)
