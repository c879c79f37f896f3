"""Post-hoc EMA from a run's snapshots: the command line over ``src/runtime/phema.py``.

    python -m src.phema RUN_DIR --sigma-rel 0.05,0.10,0.15 --out DIR [--step T]

writes ``DIR/phema-0.150.ckpt`` ..., ordinary checkpoints whose EMA weights are the least-squares
reconstruction of that sigma_rel from the snapshots (``python -m src.sample ckpt=DIR/phema-0.150.ckpt ...``
samples them). The maths, ``PowerFunctionEMA`` and ``PHEMASnapshots`` live in ``src.runtime.phema`` and are
re-exported here, so ``from src.phema import ...`` keeps working.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import ArgumentParser, refuse
from .errors import ConfigError, ProjectError
from .options import Whole, check_output_folder
from .runtime.phema import (
    SNAPSHOT_DIR,
    SNAPSHOT_RE,
    PHEMASnapshots,
    PowerFunctionEMA,
    atomic_save,
    exp_to_std,
    list_snapshots,
    power_beta,
    profile_inner_products,
    reconstruct,
    solve_coefficients,
    std_to_exp,
    write_checkpoints,
)

DESCRIPTION = ('Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion '
               'Models").')

__all__ = ["PHEMASnapshots", "PowerFunctionEMA", "SNAPSHOT_DIR", "SNAPSHOT_RE", "atomic_save", "build_parser",
           "exp_to_std", "list_snapshots", "main", "parse_sigma_rel", "power_beta", "profile_inner_products",
           "reconstruct",
           "solve_coefficients", "std_to_exp", "write_checkpoints"]


def parse_sigma_rel(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sigma-rel takes numbers separated by commas (e.g. 0.05,0.10); got {text!r}.") from None
    if not values or any(not 0 < v < 0.28 for v in values):
        raise ConfigError(f"--sigma-rel values must lie in (0, 0.28); got {text!r}.")
    return values


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m src.phema", description=DESCRIPTION)
    ap.add_argument("run_dir", help="a training run folder (with checkpoints/last.ckpt and checkpoints/phema/)")
    ap.add_argument("--sigma-rel", required=True, help="relative EMA widths, e.g. 0.05,0.10,0.15")
    ap.add_argument("--out", required=True, help="folder for the reconstructed checkpoints")
    ap.add_argument("--step", type=Whole(0).arg("--step"),
                    default=None, help="reconstruct as of this step (default: the last)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_output_folder(args.out, "--out")
        paths = write_checkpoints(Path(args.run_dir).expanduser(), parse_sigma_rel(args.sigma_rel),
                                  Path(args.out).expanduser(), args.step)
    except ProjectError as e:
        refuse(e)
    for p in paths:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
