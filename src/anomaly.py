"""Anomaly maps and likelihoods of scans under a trained diffusion prior (research use, not for diagnosis).

    python -m src.anomaly --checkpoint mri.ckpt --input scan.nii.gz --output scan.anomaly.nii.gz
    python -m src.anomaly --checkpoint mri.ckpt --input scan.nii.gz --output map.nii.gz --likelihood

Writes the per-voxel map (|scan - denoised|, in the scan's intensity units, averaged over --draws partial
noisings to --noise-level) and MAP.scores.json with the per-volume scores; --likelihood adds bits per dimension
from the probability-flow ODE. Python: ``src.tools.anomaly.Detector``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .cli import run_tool
from .errors import ConfigError
from .tools.anomaly import Detector
from .tools.anomaly.inputs import check_output, load, to_input_layout, write_map
from .tools.files import sibling, write_json
from .tools.prior import Prior


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.anomaly", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="model trained on normal scans (.ckpt from src.train)")
    p.add_argument("--input", required=True, help="scan to screen: NIfTI for mri models (PNG / WAV for the others)")
    p.add_argument("--output", required=True, help="anomaly map: .nii.gz for mri (.png or .npy otherwise)")
    p.add_argument("--noise-level", type=float, default=0.3,
                   help="how far to noise before denoising back: share of the noise schedule in (0, 1] "
                        "(default 0.3)")
    p.add_argument("--draws", type=int, default=4, help="noise draws averaged into the map (default 4)")
    p.add_argument("--steps", type=int, default=None, help="steps of the full schedule (default: the model's "
                                                           "diffusion.steps); --noise-level of them are run")
    p.add_argument("--likelihood", action="store_true", help="also bits per dimension (probability-flow ODE)")
    p.add_argument("--ode-steps", type=int, default=32, help="steps of the likelihood ODE (default 32)")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes averaged per item (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draws and probes (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="slices or tiles per network call (default 16)")
    p.add_argument("--device", default="auto", help="auto (cuda when present, the default), cpu or cuda")
    p.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    return p


def run(args) -> dict:
    out = Path(args.output).expanduser().resolve()
    for what, other in (("--input", args.input), ("--checkpoint", args.checkpoint)):
        if Path(other).expanduser().resolve() == out:
            raise ConfigError(f"--output {out} is the same file as {what}; choose another output name.")
    prior = Prior.from_checkpoint(args.checkpoint, ("mri", "image", "audio"), "anomaly detection", args.device,
                                  use_ema=not args.no_ema)
    check_output(args.output, prior.domain)
    detector = Detector(prior, noise_level=args.noise_level, draws=args.draws, steps=args.steps,
                        batch_size=args.batch_size, ode_steps=args.ode_steps, probes=args.probes)
    scan = load(args.input, prior)
    t0 = time.perf_counter()
    amap = to_input_layout(scan, detector.map(scan.x, seed=args.seed))
    fg = amap[scan.foreground] if scan.foreground.any() else amap.ravel()
    summary = {"checkpoint": str(args.checkpoint), "domain": prior.domain, "noise_level": detector.noise_level,
               "steps_run": len(detector.sigmas) - 1, "draws": detector.draws, "seed": args.seed,
               "score": float(fg.mean()), "score_p99": float(np.percentile(fg, 99)),
               "foreground_voxels": int(scan.foreground.sum()),
               "map_units": "absolute difference in the input's intensity units"}
    if args.likelihood:
        summary.update(bits_per_dim=detector.bits_per_dim(scan.x, seed=args.seed), ode_steps=detector.ode_steps,
                       probes=detector.probes, bits_per_dim_units="model space ([-1, 1] intensities), continuous")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    written = [write_map(args.output, prior.domain, scan, amap),
               write_json(summary, sibling(args.output, "scores", ".json"))]
    line = f"score {summary['score']:.4g} (p99 {summary['score_p99']:.4g})"
    if args.likelihood:
        line += f", {summary['bits_per_dim']:.4f} bits/dim"
    print(f"screened {args.input} in {summary['seconds']:.1f} s: {line}")
    for path in written:
        print(f"wrote {path}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run_tool(build_parser, run, argv)


if __name__ == "__main__":
    main()
