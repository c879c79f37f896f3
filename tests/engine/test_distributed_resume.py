"""Exact resume under two-process DDP and FSDP2 on CPU (gloo): stop half-way, resume, compare with a
straight run.

Each case runs ``python -m src.train`` three times (Lightning launches the second rank): N steps straight and,
at the same time, N/2 steps and exit; then the same command again with max_steps=N, which finds ``last.ckpt``
and resumes. The LR schedule is pinned to N steps (``optim.total_steps``) so both halves follow the straight
run's schedule. Weights, EMA, EMA counter, post-hoc EMA profiles and their snapshots, optimizer moments, LR
schedule and step must agree to 1e-6 (absolute): the data stream, training noise and global RNG are pure
functions of (seed, step, rank), and gloo reduces in a fixed order, so in practice they agree bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.dist import TINY, load_training_state, max_abs_diff, run_train, run_train_together

N = 8
TOL = 1e-6


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_stop_and_resume_matches_straight_run(tmp_path, strategy):
    # end-of-training EMA samples too: under FSDP2 every rank joins the sharded forward passes
    common = [*TINY, f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2",
              f"optim.total_steps={N}", f"checkpoint.every_n_steps={N // 2}", "sampling.num=2",
              "sampling.steps=2", "ema.phema={std:[0.05,0.10],snapshot_every:2}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # the straight run and the first half are independent: started together
    run_train_together([*common, f"trainer.max_steps={N}", f"paths.output_dir={straight}"],
                       [*common, f"trainer.max_steps={N // 2}", f"paths.output_dir={resumed}"], timeout=300)
    half = load_training_state(resumed / "checkpoints" / "last.ckpt")
    assert half["global_step"] == N // 2
    second = run_train([*common, f"trainer.max_steps={N}", f"paths.output_dir={resumed}"])
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
    # post-hoc EMA snapshots: the same steps, the same whole tensors, whether or not the run was interrupted
    snaps = [sorted((run / "checkpoints" / "phema").glob("phema-*.pt")) for run in (straight, resumed)]
    assert [p.name for p in snaps[0]] == [p.name for p in snaps[1]] == [f"phema-{t:07d}.pt" for t in (2, 4, 6, 8)]
    for p, q in zip(*snaps):
        diff = max_abs_diff(torch.load(p, weights_only=True), torch.load(q, weights_only=True), p.name)
        assert diff <= TOL, f"{strategy}: {p.name} differs by {diff:.3g} between straight and resumed runs"
