"""Checkpoint I/O: atomic writes, safe (weights-only) loading, and sharded folders read as one checkpoint.

Rebuilding the model a checkpoint describes is ``src.latent.stage.module_from_checkpoint`` (the stage knows
the module classes; this module imports none)."""

from __future__ import annotations

import errno
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .errors import ProjectError
from .fileio import atomic_write
from .safe_load import SafeEmptyLoadPlanner, WeightsOnlyIgnored, dcp_load, read_metadata, safe_torch_load, why

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
        try:  # through a Python file object: a full disk is then an OSError(ENOSPC), not torch's RuntimeError
            atomic_write(path, lambda tmp: _save_through_file(checkpoint, tmp))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # the temporary file is gone and the checkpoints already there are untouched
            raise CheckpointError(f"No space left in {path.parent} to write {path.name} at step "
                                  f"{checkpoint.get('global_step', '?')} (disk full or quota exceeded); the "
                                  "checkpoints already there are intact: free space and run the same command "
                                  "again to resume.") from None

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # Lightning's resume reads here: weights-only whatever `weights_only` or the environment say
        return read_checkpoint_file(path, map_location=map_location or "cpu", fix=RESUME_FIX)


def _save_through_file(checkpoint: dict, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


class CheckpointError(ProjectError, ValueError):
    """A checkpoint that cannot be used: the message says which file and what to do."""


SHARDED_META = "meta.pt"  # what Lightning's ModelParallelStrategy writes beside the shards
RESUME_FIX = ("pass a checkpoint of this run's model as ckpt_path=, or start afresh (no ckpt_path=, with "
              "resume=never or a new paths.output_dir)")


def refusal(path: str | Path, error: BaseException, fix: str) -> CheckpointError:
    """The one sentence for a checkpoint that a weights-only load refuses or that cannot be read at all."""
    if isinstance(error, WeightsOnlyIgnored):
        return CheckpointError(f"Checkpoint {path} was not loaded: {error}; unset it and run again.")
    if isinstance(error, pickle.UnpicklingError):
        return CheckpointError(f"Checkpoint {path} cannot be loaded safely ({why(error)}): only a full unpickler, "
                               "which can run code, would load it, so it was not written by src.train or was "
                               f"altered; {fix}.")
    return CheckpointError(f"Checkpoint {path} cannot be read ({why(error)}): it is truncated or not a PyTorch "
                           f"checkpoint; {fix}.")


def read_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool | None = None,
                         fix: str = "pass a checkpoint written by src.train") -> Any:
    """One checkpoint file, weights-only (``src.safe_load``); failures are one ``CheckpointError`` sentence."""
    try:
        return safe_torch_load(path, map_location=map_location, mmap=mmap)
    except (pickle.UnpicklingError, WeightsOnlyIgnored, RuntimeError, EOFError, OSError, ValueError) as e:
        raise refusal(path, e, fix) from None


def is_sharded(path: str | Path) -> bool:
    """A distributed (FSDP2) checkpoint: a folder of per-rank shards plus ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / SHARDED_META).is_file()


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a checkpoint file or sharded folder; -1 when it cannot be read."""
    path = Path(path)
    try:
        ckpt = safe_torch_load(path / SHARDED_META if path.is_dir() else path, mmap=not path.is_dir())
        return int(ckpt.get("global_step", -1))
    except Exception:  # noqa: BLE001 - unreadable means "not a candidate", whatever the reason
        return -1


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without unpickling arbitrary code (weights-only whatever the environment says).

    A sharded (FSDP2) checkpoint folder is consolidated in memory (``consolidate``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist; pass the path of a .ckpt file from "
                              "a run's checkpoints/ folder.")
    if path.is_dir() and not is_sharded(path):
        raise CheckpointError(f"Checkpoint {path} is a folder without {SHARDED_META}; pass a .ckpt file or "
                              "a sharded checkpoint folder written by src.train.")
    if path.is_dir():
        ckpt = consolidate(path)
    else:
        ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by src.train "
                              "(no state_dict/hyper_parameters).")
    return ckpt


# ---- sharded (FSDP2) checkpoint folders: ``python -m src.consolidate`` writes one file from them ----------
SHARDED_FIX = "use a checkpoint folder written by a trainer=fsdp run you trust"


def load_shards(path: str | Path, keys: set[str]) -> dict:
    """Read entries (``state_dict``, ``optimizer_0``, ...) of a sharded checkpoint as full tensors, on CPU,
    in one process (no process group), weights-only: the index and any pickled entry (such as the optimizer's
    param_groups) go through restricted unpicklers, see ``src.safe_load``."""
    state: dict = {}
    try:
        dcp_load(state, path, SafeEmptyLoadPlanner(keys=keys), no_dist=True)
    except (pickle.UnpicklingError, WeightsOnlyIgnored, RuntimeError, EOFError, OSError, ValueError) as e:
        raise refusal(path, e, SHARDED_FIX) from None
    return state


def consolidate(path: str | Path) -> dict:
    """Read a sharded checkpoint folder into one checkpoint dict with full (unsharded) tensors, on CPU."""
    path = Path(path).expanduser()
    if not is_sharded(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint folder (no {SHARDED_META} inside); "
                              "pass a checkpoint folder written by a trainer=fsdp run.")
    meta = read_checkpoint_file(path / SHARDED_META, fix=SHARDED_FIX)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / SHARDED_META} is not the metadata of a sharded checkpoint; {SHARDED_FIX}.")
    # only the model entry: the optimizer state is twice the model's size and sampling never needs it
    state = load_shards(path, {"state_dict"})
    if "state_dict" not in state:
        raise CheckpointError(f"{path} has no model weights in its shards; was the save interrupted?")
    return {**meta, "state_dict": state["state_dict"]}


def check_resumable(path: str | Path, model: torch.nn.Module) -> None:
    """Before Lightning loads it: ``path`` is readable weights-only and holds ``model``'s weights, name for name
    and shape for shape (a truncated file or another domain's checkpoint is one sentence, not a traceback)."""
    path = Path(path)
    if is_sharded(path):
        try:
            index = read_metadata(path)
        except (pickle.UnpicklingError, OSError) as e:
            raise refusal(path, e, RESUME_FIX) from None
        meta = read_checkpoint_file(path / SHARDED_META, fix=RESUME_FIX)
        prefix = "state_dict."
        found = {k[len(prefix):]: tuple(v.size) for k, v in index.state_dict_metadata.items()
                 if k.startswith(prefix) and hasattr(v, "size")}
    else:
        meta = read_checkpoint_file(path, mmap=True, fix=RESUME_FIX)
        state = meta.get("state_dict") if isinstance(meta, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"Checkpoint {path} holds no state_dict, so it is not a training checkpoint of "
                                  f"src.train; {RESUME_FIX}.")
        found = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    # a LoRA run's checkpoints hold only the adapters (its frozen base comes from init.from)
    keep = getattr(model, "checkpoint_state", lambda state: state)
    wanted = {k: tuple(v.shape) for k, v in keep(model.state_dict()).items()}
    differ = sorted(k for k in found.keys() | wanted.keys() if found.get(k) != wanted.get(k))
    if differ:
        key = differ[0]
        domain = (((meta.get("run_config") or {}) if isinstance(meta, dict) else {}).get("domain") or {}).get("name")
        trained = f", trained with domain={domain}" if domain else ""
        raise CheckpointError(f"Checkpoint {path} does not fit this run's model{trained} ({len(differ)} weights "
                              f"differ, e.g. {key}: {found.get(key, 'absent')} in the checkpoint, "
                              f"{wanted.get(key, 'absent')} here); {RESUME_FIX}.")
