"""Restore images and recordings with a trained diffusion prior (and classical baselines beside it).

    python -m src.restore --checkpoint image.ckpt --task inpaint --input photo.png --mask scratches.png \\
        --output photo.restored.png
    python -m src.restore --checkpoint image.ckpt --task super-resolution --scale 4 --input small.png --output big.png
    python -m src.restore --checkpoint audio.ckpt --task declip --clip-level 0.5 --input take.wav --output fixed.wav

Writes OUT, OUT.input.EXT (what the tool was given) and OUT.<baseline>.EXT; with --reference (or --simulate,
which degrades a clean --input itself) also OUT.metrics.json. Python: ``src.tools.restoration.Restorer`` (tensors),
``src.tools.restoration.workflow.restore_file(RestoreOptions(...))`` (files, as this command).
"""

from __future__ import annotations

import argparse

from .cli import ArgumentParser, run_tool
from .options import flag_type
from .tools.restoration.workflow import ALL_TASKS, KINDS, RestoreOptions, restore_file


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m src.restore", description=__doc__.split("\n")[0])
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
    t.add_argument("--mask-box", nargs=4, type=flag_type(KINDS, "mask_boxes"),
                   action="append", metavar=("X", "Y", "W", "H"),
                   help="inpaint: a missing rectangle in pixels from the top-left corner (repeatable)")
    t.add_argument("--scale", type=flag_type(KINDS, "scale"),
                   default=4, help="super-resolution: upscaling factor, 2 or 4 (default 4)")
    t.add_argument("--noise-std", type=flag_type(KINDS, "noise_std"), default=None,
                   help="denoise: noise std as a share of full scale (estimated when omitted)")
    t.add_argument("--clip-level", type=flag_type(KINDS, "clip_level"),
                   default=None, help="declip: level the recording clips at "
                                      "(full scale = 1)")
    t.add_argument("--cutoff", type=flag_type(KINDS, "cutoff"),
                   default=None, help="bandwidth: frequency (Hz) above which the "
                                      "recording holds nothing")
    s = p.add_argument_group("sampler")
    s.add_argument("--steps", type=flag_type(KINDS, "steps"),
                   default=None, help="sampler steps (default: the model's diffusion.steps)")
    s.add_argument("--eta", type=flag_type(KINDS, "eta"), default=0.85,
                   help="DDIM noise, 0 = deterministic (default 0.85)")
    s.add_argument("--seed", type=flag_type(KINDS, "seed"),
                   default=0, help="seed of the sampler and of --simulate's noise (default 0)")
    s.add_argument("--batch-size", type=flag_type(KINDS, "batch_size"),
                   default=16, help="tiles per network call (default 16)")
    s.add_argument("--overlap", type=flag_type(KINDS, "overlap"), default=0.25,
                   help="share of a tile that overlaps its neighbour (default 0.25)")
    s.add_argument("--device", default="auto", help="auto (cuda when present, the default), cpu or cuda")
    s.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def options(args: argparse.Namespace) -> RestoreOptions:
    """The parsed command line as the library's options (the only place the namespace is read)."""
    return RestoreOptions(
        checkpoint=args.checkpoint, task=args.task, input=args.input, output=args.output, reference=args.reference,
        simulate=args.simulate, mask=args.mask, mask_boxes=args.mask_box, scale=args.scale, noise_std=args.noise_std,
        clip_level=args.clip_level, cutoff=args.cutoff, steps=args.steps, eta=args.eta, seed=args.seed,
        batch_size=args.batch_size, overlap=args.overlap, device=args.device, use_ema=not args.no_ema,
        progress=not args.quiet)


def main(argv: list[str] | None = None) -> dict:
    return run_tool(build_parser, lambda args: restore_file(options(args)), argv, files=("output",))


if __name__ == "__main__":
    main()
