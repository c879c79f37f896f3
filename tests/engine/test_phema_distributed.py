"""Post-hoc EMA under two-process DDP and FSDP2 on CPU (gloo): the snapshots hold whole tensors, equal to the
power-function EMA recomputed from the run's own per-step weights, and ``src.phema`` then ``src.sample`` work
on the run folder (for FSDP2 a folder of sharded checkpoints).

A checkpoint is kept after every step (``checkpoint.every_n_steps=1``), so the test can rebuild both profiles
from the trained weights theta_1..theta_N with the update ``ema_t = beta_t ema_(t-1) + (1 - beta_t) theta_t``,
``beta_t = (1 - 1/t)^(gamma + 1)``, and compare. A snapshot that held one rank's shard, a shard gathered in the
wrong order, a profile updated on the wrong step or not at all on one rank would each fail it.
"""

from __future__ import annotations

import pytest
import torch

from src.phema import main as phema_main
from src.phema import power_beta, std_to_exp
from src.sample import main as sample_main
from tests.helpers.dist import TINY, load_training_state, run_train

N = 4
STD = [0.05, 0.10]
TOL = 1e-6


def _backbone(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def _recomputed(weights: list[dict[str, torch.Tensor]], std: float, upto: int) -> dict[str, torch.Tensor]:
    gamma = float(std_to_exp(std))
    ema = {k: v.double().clone() for k, v in weights[0].items()}  # t = 1: beta = 0, a copy
    for t in range(2, upto + 1):
        beta = power_beta(gamma, t)
        for k, v in weights[t - 1].items():
            ema[k] = beta * ema[k] + (1 - beta) * v.double() if v.is_floating_point() else v.clone()
    return ema


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    out = 0.0
    for k in a:
        assert a[k].shape == b[k].shape, f"{k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
        out = max(out, (a[k].double() - b[k].double()).abs().max().item())
    return out


@pytest.mark.slow
@pytest.mark.timeout(420)
# FSDP2 only: DDP keeps whole tensors on every rank, and its profiles are covered by the resume test
@pytest.mark.parametrize("strategy", ["fsdp"])
def test_snapshots_of_a_two_process_run_are_whole_and_follow_the_power_profiles(tmp_path, strategy):
    run = tmp_path / "run"
    run_train([*TINY, f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2",
               f"trainer.max_steps={N}", "checkpoint.every_n_steps=1", f"paths.output_dir={run}",
               f"ema.phema={{std:[{STD[0]},{STD[1]}],snapshot_every:2}}"], timeout=360)
    ckpts = run / "checkpoints"
    steps = [load_training_state(ckpts / f"step{t:07d}.ckpt") for t in range(1, N + 1)]
    assert [s["global_step"] for s in steps] == list(range(1, N + 1))
    if strategy == "fsdp":  # the run was sharded: its checkpoints are folders of per-rank shards
        assert (ckpts / "last.ckpt").is_dir() and len(list((ckpts / "last.ckpt").glob("*.distcp"))) == 2
    weights = [_backbone(s["state_dict"]) for s in steps]
    # the weights moved every step (else any average would equal them)
    assert min(_max_diff(weights[t], weights[t + 1]) for t in range(N - 1)) > 1e-5

    snaps = sorted((ckpts / "phema").glob("phema-*.pt"))
    assert [p.name for p in snaps] == ["phema-0000002.pt", "phema-0000004.pt"]
    for path, t in zip(snaps, (2, 4)):
        snap = torch.load(path, map_location="cpu", weights_only=True)
        assert snap["step"] == t and snap["std"] == STD and len(snap["state_dicts"]) == 2
        for std, sd in zip(STD, snap["state_dicts"]):
            assert all(type(v) is torch.Tensor for v in sd.values())  # plain tensors, no DTensor shards
            # whole tensors of the network's shapes, equal to the profile rebuilt from the per-step weights
            diff = _max_diff(sd, _recomputed(weights, std, t))
            assert diff <= TOL, f"{strategy}: sigma_rel {std} at step {t} differs by {diff:.3g}"
        # the two widths really differ (the narrow profile follows the latest weights more closely)
        assert _max_diff(*snap["state_dicts"]) > 1e-6
    last = load_training_state(ckpts / "last.ckpt")["state_dict"]
    assert int(last["phema.num_updates"]) == N

    # reconstruct sigma_rel 0.10 (a stored width: rebuilt exactly) and 0.15, then sample the result; both CLIs
    # run in this process (`python -m src.phema` / `python -m src.sample` call the same main): two interpreter
    # start-ups less
    out = tmp_path / "recon"
    phema_main([str(run), "--sigma-rel", "0.1,0.15", "--out", str(out)])
    recon = torch.load(out / "phema-0.100.ckpt", map_location="cpu", weights_only=True)
    assert recon["phema"]["step"] == N and not any(k.startswith("phema.") for k in recon["state_dict"])
    ema = {k[len("ema.module."):]: v for k, v in recon["state_dict"].items() if k.startswith("ema.module.")}
    assert _max_diff(ema, _recomputed(weights, 0.10, N)) <= 1e-5
    drawn = tmp_path / "drawn"
    sample_main([f"ckpt={out / 'phema-0.150.ckpt'}", "num_samples=2", "steps=2", "device=cpu", f"out={drawn}"])
    assert len(list(drawn.glob("*.png"))) >= 2
