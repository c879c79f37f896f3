"""Turn a sharded (FSDP2) checkpoint folder into one ordinary checkpoint file.

    python -m src.consolidate outputs/image/slurm-123/checkpoints/last.ckpt model.ckpt

A ``trainer=fsdp`` run saves each checkpoint as a folder: one shard file per rank plus ``meta.pt``
(step, hyper-parameters, run config). The output file holds the full weights and EMA weights
(``state_dict``), ``hyper_parameters`` and ``run_config``, like a checkpoint written by a single-GPU run, so
``src.sample`` and ``src.checkpoint.load_checkpoint`` read it on any machine without a process group. The
optimizer state is left out: to continue training, resume from the folder itself (any number of ranks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import CheckpointError, consolidate, load_shards, nonfinite_tensors
from .cli import ArgumentParser, refuse
from .errors import ProjectError
from .fileio import atomic_write
from .options import check_output_file

__all__ = ["build_parser", "consolidate", "load_shards", "main"]  # the readers live in src.checkpoint


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m src.consolidate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="sharded checkpoint folder (e.g. RUN/checkpoints/last.ckpt)")
    parser.add_argument("output", help="file to write (e.g. model.ckpt)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.output).expanduser()
    try:
        check_output_file(out, "output")
        ckpt = consolidate(args.checkpoint)
        bad = nonfinite_tensors(ckpt["state_dict"])
        if bad:
            raise CheckpointError(f"{args.checkpoint} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}); "
                                  f"nothing was written to {out}: consolidate an earlier checkpoint.")
    except ProjectError as e:
        refuse(e)
    atomic_write(out, lambda tmp: torch.save(ckpt, tmp))
    n = sum(t.numel() for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor))
    print(f"wrote {out} (step {ckpt.get('global_step', '?')}, {n / 1e6:.2f}M values incl. EMA)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
