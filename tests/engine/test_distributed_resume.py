"""Two-process DDP and FSDP2 on CPU (gloo): exact resume, and post-hoc EMA snapshots that are whole and follow the
power profiles.

Resume: per strategy, ``python -m src.train`` runs N steps straight (Lightning launches the second rank), keeping
its half-way checkpoint; a second run folder is given that checkpoint as its ``last.ckpt`` (the folder a run
stopped at step N/2 leaves), and the same command with max_steps=N in it finds ``last.ckpt`` and resumes. The LR
schedule is pinned to N steps (``optim.total_steps``). Weights, EMA, EMA counter, post-hoc EMA profiles and the
snapshots written after the resume, optimizer moments, LR schedule and step must agree to 1e-6 (absolute): the
data stream, training noise and global RNG are pure functions of (seed, step, rank), and gloo reduces in a fixed
order, so in practice they agree bit for bit.

Post-hoc EMA (FSDP2: DDP keeps whole tensors on every rank, and its profiles are compared by the resume test): the
straight FSDP2 run keeps a checkpoint after every step (``checkpoint.every_n_steps=1``), so the test rebuilds
both profiles from the trained weights theta_1..theta_N with the update
``ema_t = beta_t ema_(t-1) + (1 - beta_t) theta_t``, ``beta_t = (1 - 1/t)^(gamma + 1)``, and compares. A snapshot
that held one rank's shard, a shard gathered in the wrong order, a profile updated on the wrong step or not at
all on one rank would each fail it. ``src.phema`` then ``src.sample`` run on the folder of sharded checkpoints.

The runs of both strategies are shared by the tests (a module fixture): both straight runs start together, and
each resumed run as soon as its straight run has written the half-way checkpoint.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import torch

from src.phema import main as phema_main
from src.phema import power_beta, std_to_exp
from src.sample import main as sample_main
from tests.helpers.background import Background
from tests.helpers.dist import REPO, TINY, clean_env, load_training_state, max_abs_diff

N = 4
STD = [0.05, 0.10]
TOL = 1e-6
STRATEGIES = ("ddp", "fsdp")


def _common(strategy: str) -> list[str]:
    # end-of-training EMA samples too: under FSDP2 every rank joins the sharded forward passes
    return [*TINY, f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2", f"optim.total_steps={N}",
            "sampling.num=2", "sampling.steps=2", f"ema.phema={{std:[{STD[0]},{STD[1]}],snapshot_every:2}}"]


def _train_cmd(strategy: str, out, every: int) -> list[str]:
    return [sys.executable, "-m", "src.train", *_common(strategy), f"trainer.max_steps={N}",
            f"checkpoint.every_n_steps={every}", f"paths.output_dir={out}"]


def _finished(started: Background, name: str) -> subprocess.CompletedProcess:
    res = started.result(name)
    if res.returncode != 0:
        raise AssertionError(f"{name}: src.train failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-6000:]}")
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per strategy: the straight run's folder, the resumed run's folder, the half-way state it resumed from and
    the resumed run's output. A resumed run starts as soon as its straight run has written the half-way
    checkpoint (checkpoint writes are atomic), while that run goes on."""
    base = tmp_path_factory.mktemp("two_rank")
    folders = {s: (base / s / "straight", base / s / "resumed") for s in STRATEGIES}
    every = {"ddp": N // 2, "fsdp": 1}  # the FSDP2 straight run keeps every step for the post-hoc EMA check
    halves = {}
    with Background(timeout=540) as started:
        for s, (straight, _) in folders.items():
            started.start(f"straight-{s}", _train_cmd(s, straight, every[s]), clean_env(), REPO)
        waiting = dict(folders)
        while waiting:
            for s, (straight, resumed) in list(waiting.items()):
                half = straight / "checkpoints" / f"step{N // 2:07d}.ckpt"
                if not half.exists():
                    if started.process(f"straight-{s}").poll() is not None:
                        _finished(started, f"straight-{s}")
                        raise AssertionError(f"{s}: the straight run wrote no {half.name}")
                    continue
                # the run folder a run stopped after step N/2 leaves: its checkpoint of that step as last.ckpt (a
                # file under DDP, a folder of per-rank shards under FSDP2)
                (resumed / "checkpoints").mkdir(parents=True)
                if half.is_dir():
                    shutil.copytree(half, resumed / "checkpoints" / "last.ckpt")
                else:
                    shutil.copy2(half, resumed / "checkpoints" / "last.ckpt")
                halves[s] = load_training_state(resumed / "checkpoints" / "last.ckpt")
                started.start(f"resumed-{s}", _train_cmd(s, resumed, N // 2), clean_env(), REPO)
                del waiting[s]
            time.sleep(0.2)
        for s in STRATEGIES:
            _finished(started, f"straight-{s}")
        second = {s: _finished(started, f"resumed-{s}") for s in STRATEGIES}
    return {s: {"straight": folders[s][0], "resumed": folders[s][1], "half": halves[s], "second": second[s]}
            for s in STRATEGIES}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_and_resume_matches_straight_run(runs, strategy):
    run = runs[strategy]
    straight, resumed, half, second = run["straight"], run["resumed"], run["half"], run["second"]
    assert half["global_step"] == N // 2
    assert f"at step {N // 2}" in second.stderr + second.stdout, "the second run did not resume"

    assert len(list((straight / "samples").glob("*.png"))) == 2
    a = load_training_state(straight / "checkpoints" / "last.ckpt")
    b = load_training_state(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == N
    sd = a["state_dict"]
    assert any(k.startswith("ema.module.") for k in sd) and int(sd["ema.num_updates"]) == N
    assert any(k.startswith("phema.emas.1.") for k in sd) and int(sd["phema.num_updates"]) == N
    # the run must have trained: the resumed half moved the weights away from the half-way checkpoint
    assert max_abs_diff(half["state_dict"], b["state_dict"]) > 1e-4
    for part in ("state_dict", "optimizer", "lr_schedulers"):
        diff = max_abs_diff(a[part], b[part], part)
        assert diff <= TOL, f"{strategy}: {part} differs by {diff:.3g} between straight and resumed runs"
    # post-hoc EMA snapshots: the one the resumed run wrote (step 4) holds the same whole tensors as the straight
    # run's
    snaps = [sorted((r / "checkpoints" / "phema").glob("phema-*.pt")) for r in (straight, resumed)]
    assert [p.name for p in snaps[0]] == [f"phema-{t:07d}.pt" for t in (2, 4)]
    assert [p.name for p in snaps[1]] == ["phema-0000004.pt"]
    for p, q in zip(snaps[0][1:], snaps[1]):
        diff = max_abs_diff(torch.load(p, weights_only=True), torch.load(q, weights_only=True), p.name)
        assert diff <= TOL, f"{strategy}: {p.name} differs by {diff:.3g} between straight and resumed runs"


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
@pytest.mark.timeout(600)
def test_snapshots_of_a_two_process_run_are_whole_and_follow_the_power_profiles(runs, tmp_path):
    run = runs["fsdp"]["straight"]
    ckpts = run / "checkpoints"
    steps = [load_training_state(ckpts / f"step{t:07d}.ckpt") for t in range(1, N + 1)]
    assert [s["global_step"] for s in steps] == list(range(1, N + 1))
    # the run was sharded: its checkpoints are folders of per-rank shards
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
            assert diff <= TOL, f"fsdp: sigma_rel {std} at step {t} differs by {diff:.3g}"
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
