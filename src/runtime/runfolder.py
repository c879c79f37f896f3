"""A run whose config or data check fails leaves no run folder behind.

Hydra creates the run folder (``.hydra/``, ``train.log``) before the run starts; the run adds
``config.yaml``, ``checkpoints/``, ``samples/`` and ``wandb/``. When the run stops on a user-facing error
before any checkpoint exists, exactly those entries are removed again, and the folder itself when that
leaves it empty; nothing else in a folder named by ``paths.output_dir`` is ever touched.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HYDRA_ENTRIES = {".hydra", "train.log"}
RUN_ENTRIES = HYDRA_ENTRIES | {"config.yaml", "checkpoints", "samples", "wandb", "metrics.jsonl"}


def _is_run_log(name: str) -> bool:  # train.log and the DDP ranks' train_ddp_process_N.log
    return name == "train.log" or (name.startswith("train_ddp_process_") and name.endswith(".log"))


def is_fresh(out: Path) -> bool:
    """True when ``out`` holds nothing but what Hydra wrote for this start (no earlier run's files)."""
    if not out.exists():
        return True
    return all(p.name in HYDRA_ENTRIES or _is_run_log(p.name) for p in out.iterdir())


def remove_failed_run(out: Path) -> bool:
    """Remove what this run wrote to ``out`` (a fresh folder with no checkpoint); True when it did."""
    if not out.is_dir() or any((out / "checkpoints").glob("*.ckpt")):
        return False
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()  # its offline writer would otherwise recreate files in the folder
    for entry in out.iterdir():
        if entry.name in RUN_ENTRIES or _is_run_log(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if not any(out.iterdir()):
        out.rmdir()
    return True
