"""Shared by the multi-process tests: run ``python -m src.train`` as a subprocess and read its checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# a few seconds per step on 2 CPU cores: 16x16 images, the tiny U-Net, 4 images per rank
TINY = [
    "experiment=smoke", "logger=none", "datamodule.resolution=16", "datamodule.builtin_size=64",
    "datamodule.batch_size=4", "datamodule.num_workers=0", "trainer.enable_progress_bar=false",
    "trainer.val_check_interval=4", "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=2", "sampling.num=0", "checkpoint.keep=-1", "optim.warmup_steps=2",
]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus SLURM's variables: a test run inside a SLURM job still launches its own ranks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1", **extra)
    return env


def run_module(module: str, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` from the repository root (``env``: extra variables); an AssertionError (with its
    output) unless it exits 0."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def run_train(overrides: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return run_module("src.train", *overrides, timeout=timeout)


def run_train_together(*runs: list[str], timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """``run_train`` for independent runs, started at once: a two-rank run spends most of its time in the
    interpreter start-ups of its ranks, one after the other (rank 0's, then the one it launches)."""
    from tests.conftest import run_together

    results = run_together([[sys.executable, "-m", "src.train", *o] for o in runs], clean_env(), REPO, timeout)
    for res in results:
        if res.returncode != 0:
            raise AssertionError(f"src.train failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return results


def load_training_state(path: Path) -> dict:
    """Weights, EMA, optimizer and schedule of a checkpoint file or sharded folder, as full CPU tensors."""
    if path.is_dir():
        from src.consolidate import load_shards

        meta = torch.load(path / "meta.pt", map_location="cpu", weights_only=True)
        shards = load_shards(path, {"state_dict", "optimizer_0"})
        # sharded optimizer state is keyed by parameter name; files key it by position, in the same order
        opt = shards["optimizer_0"]["state"]
        names = shards["optimizer_0"]["param_groups"][0]["params"]
        return {"state_dict": shards["state_dict"], "optimizer": {i: opt[n] for i, n in enumerate(names)},
                "global_step": meta["global_step"], "lr_schedulers": meta["lr_schedulers"]}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"][0]["state"],
            "global_step": ckpt["global_step"], "lr_schedulers": ckpt["lr_schedulers"]}


def max_abs_diff(a, b, where: str = "") -> float:
    """Largest elementwise difference between two nested structures of tensors and numbers."""
    if isinstance(a, dict):
        if set(a) != set(b):
            raise AssertionError(f"{where}: keys differ: {sorted(set(a) ^ set(b))[:5]}")
        return max([max_abs_diff(a[k], b[k], f"{where}.{k}") for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        return max([max_abs_diff(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))] or [0.0])
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, f"{where}: shapes differ {a.shape} vs {b.shape}"
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, (int, float)):
        return abs(a - b)
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0.0
