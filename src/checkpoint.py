"""Checkpoint I/O: atomic writes, and safe loading of a trained model for sampling and reconstruction."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .errors import ProjectError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder, fsyncs, then renames: a crash never leaves half a
    checkpoint, and a checkpoint with non-finite weights is refused, so it never replaces a finite one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        bad = nonfinite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            msg = (f"Refusing to write {path} at step {checkpoint.get('global_step', '?')}: {len(bad)} weight "
                   f"tensors are not finite (e.g. {bad[0]}); the existing checkpoints are kept.")
            log.error("%s", msg)
            # raising (not returning) stops ModelCheckpoint from rotating away an older, finite checkpoint
            raise CheckpointError(msg)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            if tmp.exists():
                tmp.unlink()


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems and platforms cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointError(ProjectError, ValueError):
    """A checkpoint that cannot be used: the message says which file and what to do."""


SHARDED_META = "meta.pt"  # what Lightning's ModelParallelStrategy writes beside the shards


def is_sharded(path: str | Path) -> bool:
    """A distributed (FSDP2) checkpoint: a folder of per-rank shards plus ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / SHARDED_META).is_file()


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a checkpoint file or sharded folder; -1 when it cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            ckpt = torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt.get("global_step", -1))
    except Exception:  # noqa: BLE001 - unreadable means "not a candidate", whatever the reason
        return -1


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without unpickling arbitrary code (``weights_only=True``).

    A sharded (FSDP2) checkpoint folder is consolidated in memory, see ``src.consolidate``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist; pass the path of a .ckpt file from "
                              "a run's checkpoints/ folder.")
    if path.is_dir() and not is_sharded(path):
        raise CheckpointError(f"Checkpoint {path} is a folder without {SHARDED_META}; pass a .ckpt file or "
                              "a sharded checkpoint folder written by src.train.")
    try:
        if path.is_dir():
            from .consolidate import consolidate

            ckpt = consolidate(path)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"Could not read checkpoint {path} safely ({type(e).__name__}: {e}); "
                              "is it a checkpoint written by src.train?") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by src.train "
                              "(no state_dict/hyper_parameters).")
    return ckpt


def module_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the DiffusionModule from the checkpoint's own config (allow-listed builders), load weights."""
    from .module import DiffusionModule

    ckpt = load_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    try:
        module = DiffusionModule(**hp)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} describes a model this version cannot build: {e}") from None
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"Checkpoint {path} does not match its own model config "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} keys, e.g. "
                              f"{(missing or unexpected)[:3]}).")
    module.eval().to(device)
    return module, ckpt
