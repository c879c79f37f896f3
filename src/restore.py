"""Restore images and recordings with a trained diffusion prior (and classical baselines beside it).

    python -m src.restore --checkpoint image.ckpt --task inpaint --input photo.png --mask scratches.png \\
        --output photo.restored.png
    python -m src.restore --checkpoint image.ckpt --task super-resolution --scale 4 --input small.png --output big.png
    python -m src.restore --checkpoint audio.ckpt --task declip --clip-level 0.5 --input take.wav --output fixed.wav

Writes OUT, OUT.input.EXT (what the tool was given) and OUT.<baseline>.EXT; with --reference (or --simulate,
which degrades a clean --input itself) also OUT.metrics.json. Python: ``src.tools.restoration.Restorer``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import run_tool
from .errors import ConfigError
from .tools.files import kind_of, sibling, write_json
from .tools.prior import Prior
from .tools.restoration import TASKS, Restorer

ALL_TASKS = ("inpaint", "super-resolution", "denoise", "declip", "bandwidth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.restore", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="unconditional image or audio model (.ckpt from src.train)")
    p.add_argument("--task", required=True, choices=ALL_TASKS, help="what to repair: inpaint, super-resolution or "
                   "denoise (images); denoise, declip or bandwidth (recordings)")
    p.add_argument("--input", required=True, help="the damaged image (PNG/JPEG/TIFF) or recording (WAV/FLAC/OGG)")
    p.add_argument("--output", required=True, help="the restored file (same kind as the input)")
    p.add_argument("--reference", help="the clean original: writes OUT.metrics.json for the result and baseline")
    p.add_argument("--simulate", action="store_true", help="--input is clean: damage it first (mask, downsample, "
                                                           "noise, clip or low-pass) and score against it")
    t = p.add_argument_group("task options")
    t.add_argument("--mask", help="inpaint: PNG of the input's size, white where pixels are missing")
    t.add_argument("--mask-box", nargs=4, type=int, action="append", metavar=("X", "Y", "W", "H"),
                   help="inpaint: a missing rectangle in pixels from the top-left corner (repeatable)")
    t.add_argument("--scale", type=int, default=4, help="super-resolution: upscaling factor, 2 or 4 (default 4)")
    t.add_argument("--noise-std", type=float, default=None,
                   help="denoise: noise std as a share of full scale (estimated when omitted)")
    t.add_argument("--clip-level", type=float, default=None, help="declip: level the recording clips at "
                                                                  "(full scale = 1)")
    t.add_argument("--cutoff", type=float, default=None, help="bandwidth: frequency (Hz) above which the "
                                                              "recording holds nothing")
    s = p.add_argument_group("sampler")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's diffusion.steps)")
    s.add_argument("--eta", type=float, default=0.85, help="DDIM noise, 0 = deterministic (default 0.85)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler and of --simulate's noise (default 0)")
    s.add_argument("--batch-size", type=int, default=16, help="tiles per network call (default 16)")
    s.add_argument("--overlap", type=float, default=0.25,
                   help="share of a tile that overlaps its neighbour (default 0.25)")
    s.add_argument("--device", default="auto", help="auto (cuda when present, the default), cpu or cuda")
    s.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_paths(args) -> None:
    out = Path(args.output).expanduser().resolve()
    for what, other in (("--input", args.input), ("--reference", args.reference), ("--checkpoint", args.checkpoint),
                        ("--mask", args.mask)):
        if other and Path(other).expanduser().resolve() == out:
            raise ConfigError(f"--output {out} is the same file as {what}; inputs are never overwritten, choose "
                              "another output name.")


def run(args) -> dict:
    check_paths(args)
    prior = Prior.from_checkpoint(args.checkpoint, ("image", "audio"), "restoration", args.device,
                                  use_ema=not args.no_ema)
    domain = prior.domain
    if args.task not in TASKS[domain]:
        other = next(d for d, tasks in TASKS.items() if args.task in tasks)
        raise ConfigError(f"--task {args.task} restores {other} but checkpoint {args.checkpoint} is a {domain} "
                          f"model; pass a {other} checkpoint, or one of the {domain} tasks: "
                          f"{', '.join(TASKS[domain])}.")
    for what, path in (("--input", args.input), ("--output", args.output)):
        if kind_of(path) != domain:
            raise ConfigError(f"{what} {path} is not {'an image' if domain == 'image' else 'a sound'} file, but "
                              f"checkpoint {args.checkpoint} is a {domain} model; pass a "
                              f"{'.png' if domain == 'image' else '.wav'} file.")
    restorer = Restorer(prior, steps=args.steps, eta=args.eta, batch_size=args.batch_size, overlap=args.overlap)
    if domain == "image":
        from .tools.restoration.image import prepare
    else:
        from .tools.restoration.audio import prepare
    job = prepare(args, prior)
    for note in job.notes:
        print(f"note: {note}", file=sys.stderr)
    t0 = time.perf_counter()
    result = job.from_model(restorer.restore(job.problem, seed=args.seed, progress=not args.quiet))
    seconds = time.perf_counter() - t0
    baseline = job.baseline()
    written = job.write(args.output, result, baseline)
    summary = {"task": args.task, "domain": domain, "checkpoint": str(args.checkpoint), "steps": restorer.steps,
               "eta": restorer.eta, "seed": args.seed, "seconds": round(seconds, 2),
               "shape": list(result.shape), "baseline": baseline[0], "notes": job.notes}
    if args.task == "denoise":
        summary["noise_std"] = round(float(job.noise_std), 6)
    if job.reference is not None:
        summary["reference"] = "the --reference file" if args.reference else "the clean --input (--simulate)"
        summary["metrics"] = job.metrics(result, baseline)
        written.append(write_json(summary, sibling(args.output, "metrics", ".json")))
    print(f"restored {args.input} ({args.task}, {restorer.steps} steps) in {seconds:.1f} s")
    for key, m in (summary.get("metrics") or {}).items():
        print(f"  {key:<12} " + "   ".join(f"{k} {v:.4f}" for k, v in m.items()))
    for path in written:
        print(f"wrote {path}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run_tool(build_parser, run, argv)


if __name__ == "__main__":
    main()
