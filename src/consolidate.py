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
import os
import sys
from pathlib import Path

import torch

from .checkpoint import SHARDED_META, CheckpointError, is_sharded


def load_shards(path: str | Path, keys: set[str]) -> dict:
    """Read entries (``state_dict``, ``optimizer_0``, ...) of a sharded checkpoint as full tensors, on CPU,
    in one process (no process group)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path),
                     planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    return state


def consolidate(path: str | Path) -> dict:
    """Read a sharded checkpoint folder into one checkpoint dict with full (unsharded) tensors, on CPU."""
    path = Path(path).expanduser()
    if not is_sharded(path):
        raise CheckpointError(f"{path} is not a sharded checkpoint folder (no {SHARDED_META} inside); "
                              "pass a checkpoint folder written by a trainer=fsdp run.")
    meta = torch.load(path / SHARDED_META, map_location="cpu", weights_only=True)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, out)
    n = sum(t.numel() for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor))
    print(f"wrote {out} (step {ckpt.get('global_step', '?')}, {n / 1e6:.2f}M values incl. EMA)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
