"""Turn a sharded (FSDP2) checkpoint folder into one ordinary checkpoint file.

    python -m src.consolidate outputs/image/slurm-123/checkpoints/last.ckpt model.ckpt

A ``trainer=fsdp`` run saves each checkpoint as a folder: one shard file per rank plus ``meta.pt``
(step, hyper-parameters, run config). The output file holds the full weights and EMA weights
(``state_dict``), ``hyper_parameters`` and ``run_config``, like a checkpoint written by a single-GPU run, so
``src.sample`` and ``src.checkpoint.load_checkpoint`` read it on any machine without a process group. The
optimizer state is left out: to continue training, resume from the folder itself (any number of ranks).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

from .checkpoint import SHARDED_META, CheckpointError, is_sharded, read_checkpoint_file, refusal
from .fileio import atomic_write
from .safe_load import SafeEmptyLoadPlanner, WeightsOnlyIgnored, dcp_load

_FIX = "use a checkpoint folder written by a trainer=fsdp run you trust"


def load_shards(path: str | Path, keys: set[str]) -> dict:
    """Read entries (``state_dict``, ``optimizer_0``, ...) of a sharded checkpoint as full tensors, on CPU,
    in one process (no process group), weights-only: the index and any pickled entry (such as the optimizer's
    param_groups) go through restricted unpicklers, see ``src.safe_load``."""
    state: dict = {}
    try:
        dcp_load(state, path, SafeEmptyLoadPlanner(keys=keys), no_dist=True)
    except (pickle.UnpicklingError, WeightsOnlyIgnored, RuntimeError, EOFError, OSError, ValueError) as e:
        raise refusal(path, e, _FIX) from None
    return state


def consolidate(path: str | Path) -> dict:
    """Read a sharded checkpoint folder into one checkpoint dict with full (unsharded) tensors, on CPU."""
    path = Path(path).expanduser()
    if not is_sharded(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint folder (no {SHARDED_META} inside); "
                              "pass a checkpoint folder written by a trainer=fsdp run.")
    meta = read_checkpoint_file(path / SHARDED_META, fix=_FIX)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / SHARDED_META} is not the metadata of a sharded checkpoint; {_FIX}.")
    # only the model entry: the optimizer state is twice the model's size and sampling never needs it
    state = load_shards(path, {"state_dict"})
    if "state_dict" not in state:
        raise CheckpointError(f"{path} has no model weights in its shards; was the save interrupted?")
    return {**meta, "state_dict": state["state_dict"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m src.consolidate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="sharded checkpoint folder (e.g. RUN/checkpoints/last.ckpt)")
    parser.add_argument("output", help="file to write (e.g. model.ckpt)")
    args = parser.parse_args(argv)
    out = Path(args.output).expanduser()
    try:
        ckpt = consolidate(args.checkpoint)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    atomic_write(out, lambda tmp: torch.save(ckpt, tmp))
    n = sum(t.numel() for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor))
    print(f"wrote {out} (step {ckpt.get('global_step', '?')}, {n / 1e6:.2f}M values incl. EMA)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
