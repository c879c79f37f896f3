"""A run resumed from its step-6 checkpoint ends exactly where the uninterrupted 12-step run ends."""

import torch

from src.train import train

TINY = ["experiment=smoke", "logger=none", "trainer.max_steps=12", "checkpoint.every_n_steps=6",
        "checkpoint.keep=-1", "trainer.val_check_interval=6", "sampling.num=0", "trainer.accelerator=cpu",
        "datamodule.random_flip=true"]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_matches_uninterrupted_run(compose_cfg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    res_a = train(compose_cfg(TINY + [f"paths.output_dir={a}"]))
    mid = a / "checkpoints" / "step0000006.ckpt"
    assert mid.exists()
    res_b = train(compose_cfg(TINY + [f"paths.output_dir={b}", f"ckpt_path={mid}"]))

    assert res_a["global_step"] == res_b["global_step"] == 12
    ca, cb = _load(a / "checkpoints" / "last.ckpt"), _load(b / "checkpoints" / "last.ckpt")
    assert ca["global_step"] == cb["global_step"] == 12
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    ema_keys = [k for k in ca["state_dict"] if k.startswith("ema.")]
    assert ema_keys and int(cb["state_dict"]["ema.num_updates"]) == 12
    for k, v in ca["state_dict"].items():  # weights and EMA, tolerance 1e-6
        torch.testing.assert_close(cb["state_dict"][k], v, atol=1e-6, rtol=0, msg=f"mismatch in {k}")
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    for i in sa:
        torch.testing.assert_close(sb[i]["exp_avg_sq"], sa[i]["exp_avg_sq"], atol=1e-9, rtol=1e-6)
    assert ca["lr_schedulers"][0]["last_epoch"] == cb["lr_schedulers"][0]["last_epoch"] == 12
    # the loss curve continues: the last training and validation losses are the same numbers
    for key in ("train/loss", "val/loss"):
        assert abs(res_a["metrics"][key] - res_b["metrics"][key]) < 1e-5, key


def test_auto_resume_from_run_folder(compose_cfg, tmp_path):
    """Re-running into a folder with last.ckpt continues it (what a requeued SLURM job relies on)."""
    out = tmp_path / "run"
    first = train(compose_cfg(TINY + [f"paths.output_dir={out}", "trainer.max_steps=6"]))
    assert first["global_step"] == 6
    second = train(compose_cfg(TINY + [f"paths.output_dir={out}", "trainer.max_steps=9"]))
    assert second["global_step"] == 9
    fresh = train(compose_cfg(TINY + [f"paths.output_dir={out}", "trainer.max_steps=3", "resume=never"]))
    assert fresh["global_step"] == 3
