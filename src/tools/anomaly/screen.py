"""Screening one file: the library behind ``python -m src.anomaly``.

    from src.tools.anomaly.screen import ScreenOptions, screen_file
    summary = screen_file(ScreenOptions(checkpoint="mri.ckpt", input="scan.nii.gz", output="scan.anomaly.nii.gz"))

Writes the anomaly map (in the input's intensity units) and MAP.scores.json, prints what it did and returns
the scores. For tensors in memory use ``Detector``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.errors import ConfigError
from src.fileio import sibling, write_json
from src.options import COUNT, SEED, Number, Whole, check_fields

from ..prior import Prior
from .detector import Detector
from .inputs import check_output, load, to_input_layout, write_map

DOMAINS = ("mri", "image", "audio")


@dataclass
class ScreenOptions:
    """Everything one screening needs; the defaults are those of ``python -m src.anomaly``."""

    checkpoint: str | Path            # a model trained on normal scans
    input: str | Path                 # NIfTI for mri models (PNG / WAV for the others)
    output: str | Path                # the map: .nii.gz for mri (.png or .npy otherwise)
    noise_level: float = 0.3          # share of the noise schedule to noise to, in (0, 1]
    draws: int = 4                    # noise draws averaged into the map
    steps: int | None = None          # steps of the full schedule (None: the model's diffusion.steps)
    likelihood: bool = False          # also bits per dimension (probability-flow ODE)
    ode_steps: int = 32
    probes: int = 1                   # Hutchinson probes averaged per item
    seed: int = 0
    batch_size: int = 16              # slices or tiles per network call
    device: str = "auto"
    use_ema: bool = True


# what each numeric option accepts: checked here for the Python API and by the CLI's flags (src.anomaly)
KINDS = {
    "noise_level": Number(0.0, 1.0, low_open=True),
    "draws": COUNT,
    "steps": Whole(1, none_ok=True),
    "ode_steps": COUNT,
    "probes": COUNT,
    "seed": SEED,
    "batch_size": COUNT,
}


def screen_file(opts: ScreenOptions) -> dict:
    """Screen ``opts.input`` and write its map to ``opts.output`` (see the module docstring)."""
    check_fields(opts, KINDS)
    out = Path(opts.output).expanduser().resolve()
    for what, other in (("--input", opts.input), ("--checkpoint", opts.checkpoint)):
        if Path(other).expanduser().resolve() == out:
            raise ConfigError(f"--output {out} is the same file as {what}; choose another output name.")
    prior = Prior.from_checkpoint(opts.checkpoint, DOMAINS, "anomaly detection", opts.device, use_ema=opts.use_ema)
    check_output(opts.output, prior.domain)
    detector = Detector(prior, noise_level=opts.noise_level, draws=opts.draws, steps=opts.steps,
                        batch_size=opts.batch_size, ode_steps=opts.ode_steps, probes=opts.probes)
    if opts.likelihood and prior.student:
        raise ConfigError(f"Checkpoint {opts.checkpoint} is a few-step student, which has no probability-flow ODE "
                          "to integrate; pass its teacher's checkpoint for --likelihood.")
    scan = load(opts.input, prior)
    t0 = time.perf_counter()
    amap = to_input_layout(scan, detector.map(scan.x, seed=opts.seed))
    fg = amap[scan.foreground] if scan.foreground.any() else amap.ravel()
    summary = {"checkpoint": str(opts.checkpoint), "domain": prior.domain, "noise_level": detector.noise_level,
               "steps_run": len(detector.sigmas) - 1, "draws": detector.draws, "seed": opts.seed,
               "score": float(fg.mean()), "score_p99": float(np.percentile(fg, 99)),
               "foreground_voxels": int(scan.foreground.sum()),
               "map_units": "absolute difference in the input's intensity units"}
    if opts.likelihood:
        summary.update(bits_per_dim=detector.bits_per_dim(scan.x, seed=opts.seed), ode_steps=detector.ode_steps,
                       probes=detector.probes, bits_per_dim_units="model space ([-1, 1] intensities), continuous")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    written = [write_map(opts.output, prior.domain, scan, amap),
               write_json(summary, sibling(opts.output, "scores", ".json"))]
    line = f"score {summary['score']:.4g} (p99 {summary['score_p99']:.4g})"
    if opts.likelihood:
        line += f", {summary['bits_per_dim']:.4f} bits/dim"
    print(f"screened {opts.input} in {summary['seconds']:.1f} s: {line}")
    for path in written:
        print(f"wrote {path}")
    return summary
