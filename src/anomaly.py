"""Anomaly maps and likelihoods of scans under a trained diffusion prior (research use, not for diagnosis).

    python -m src.anomaly --checkpoint mri.ckpt --input scan.nii.gz --output scan.anomaly.nii.gz
    python -m src.anomaly --checkpoint mri.ckpt --input scan.nii.gz --output map.nii.gz --likelihood

Writes the per-voxel map (|scan - denoised|, in the scan's intensity units, averaged over --draws partial
noisings to --noise-level) and MAP.scores.json with the per-volume scores; --likelihood adds bits per dimension
from the probability-flow ODE. Python: ``src.tools.anomaly.Detector`` (tensors),
``src.tools.anomaly.screen.screen_file(ScreenOptions(...))`` (files, as this command).
"""

from __future__ import annotations

import argparse

from .cli import ArgumentParser, run_tool
from .options import flag_type
from .tools.anomaly.screen import KINDS, ScreenOptions, screen_file


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m src.anomaly", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="model trained on normal scans (.ckpt from src.train)")
    p.add_argument("--input", required=True, help="scan to screen: NIfTI for mri models (PNG / WAV for the others)")
    p.add_argument("--output", required=True, help="anomaly map: .nii.gz for mri (.png or .npy otherwise)")
    p.add_argument("--noise-level", type=flag_type(KINDS, "noise_level"), default=0.3,
                   help="how far to noise before denoising back: share of the noise schedule in (0, 1] "
                        "(default 0.3)")
    p.add_argument("--draws", type=flag_type(KINDS, "draws"),
                   default=4, help="noise draws averaged into the map (default 4)")
    p.add_argument("--steps", type=flag_type(KINDS, "steps"),
                   default=None, help="steps of the full schedule (default: the model's "
                                      "diffusion.steps); --noise-level of them are run")
    p.add_argument("--likelihood", action="store_true", help="also bits per dimension (probability-flow ODE)")
    p.add_argument("--ode-steps", type=flag_type(KINDS, "ode_steps"),
                   default=32, help="steps of the likelihood ODE (default 32)")
    p.add_argument("--probes", type=flag_type(KINDS, "probes"),
                   default=1, help="Hutchinson probes averaged per item (default 1)")
    p.add_argument("--seed", type=flag_type(KINDS, "seed"), default=0,
                   help="seed of the noise draws and probes (default 0)")
    p.add_argument("--batch-size", type=flag_type(KINDS, "batch_size"),
                   default=16, help="slices or tiles per network call (default 16)")
    p.add_argument("--device", default="auto", help="auto (cuda when present, the default), cpu or cuda")
    p.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    return p


def options(args: argparse.Namespace) -> ScreenOptions:
    """The parsed command line as the library's options (the only place the namespace is read)."""
    return ScreenOptions(
        checkpoint=args.checkpoint, input=args.input, output=args.output, noise_level=args.noise_level,
        draws=args.draws, steps=args.steps, likelihood=args.likelihood, ode_steps=args.ode_steps,
        probes=args.probes, seed=args.seed, batch_size=args.batch_size, device=args.device,
        use_ema=not args.no_ema)


def main(argv: list[str] | None = None) -> dict:
    return run_tool(build_parser, lambda args: screen_file(options(args)), argv, files=("output",))


if __name__ == "__main__":
    main()
