"""MRI reconstruction from undersampled k-space with a trained diffusion prior (and classical baselines).

    python -m src.reconstruct --checkpoint model.ckpt --input scan.h5 --output recon.nii.gz
    python -m src.reconstruct --checkpoint model.ckpt --input brain.nii.gz --simulate --mask equispaced \\
        --acceleration 4 --center-fraction 0.08 --seed 0 --output recon.nii.gz --num-samples 4

Python: ``Reconstructor.from_checkpoint(path, device="cpu").reconstruct(kspace, mask)`` returns the image;
``reconstruct_file(ReconstructOptions(input=..., output=..., checkpoint=...))`` does what this command does.
"""

from __future__ import annotations

import argparse

from .cli import ArgumentParser, HelpFormatter, run_tool
from .options import flag_type
from .tools.reconstruction.masks import MASK_KINDS
from .tools.reconstruction.reconstructor import Reconstruction, Reconstructor
from .tools.reconstruction.workflow import KINDS, METHODS, ReconstructOptions, reconstruct_file

__all__ = ["ReconstructOptions", "Reconstruction", "Reconstructor", "main", "options", "reconstruct_file"]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m src.reconstruct", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", help="trained slice model (.ckpt from src.train domain=mri); "
                                        "needed for --method diffusion")
    p.add_argument("--input", required=True, help="fastMRI-style .h5 (kspace, optional mask) or, with "
                                                  "--simulate, a NIfTI magnitude volume")
    p.add_argument("--output", required=True, help="reconstructed volume, .nii.gz or .nii")
    p.add_argument("--method", choices=list(METHODS), default="diffusion",
                   help="diffusion prior, auto (the diffusion prior unless k-space cross-validation or the "
                        "geometry check finds it out of its domain: then TV or zero-filled, with a warning), "
                        "total-variation compressed sensing, or zero-filled inverse FFT")
    sim = p.add_argument_group("retrospective undersampling (--simulate)")
    sim.add_argument("--simulate", action="store_true",
                     help="undersample the input retrospectively (NIfTI magnitude or fully sampled .h5)")
    sim.add_argument("--mask", choices=sorted(MASK_KINDS), default="equispaced",
                     help="which k-space columns are kept: evenly spaced or drawn at random")
    sim.add_argument("--acceleration", type=flag_type(KINDS, "acceleration"), default=4.0,
                     help="undersampling factor: one in this many k-space columns is kept")
    sim.add_argument("--center-fraction", type=flag_type(KINDS, "center_fraction"), default=0.08,
                     help="share of the central (low-frequency) k-space columns always kept")
    sim.add_argument("--seed", type=flag_type(KINDS, "seed"), default=0,
                     help="seed of the random mask and of the sampler")
    out = p.add_argument_group("outputs")
    out.add_argument("--reference",
                     help="fully sampled reference (NIfTI with the output's axes, or fastMRI .h5 with "
                          "reconstruction_rss); writes OUT.metrics.json. With --simulate the fully sampled "
                          "input is the reference by default")
    out.add_argument("--crop-reference", action="store_true",
                     help="score the centre of a NIfTI reference that is smaller than the reconstruction "
                          "(fastMRI .h5 references are always centre-cropped, as fastMRI does)")
    out.add_argument("--allow-reference-mismatch", action="store_true",
                     help="score against a reference that does not look like the reconstructed region")
    out.add_argument("--num-samples", type=flag_type(KINDS, "num_samples"), default=None,
                     help="posterior samples; >1 writes their mean and OUT.std.nii.gz (per-voxel std); default: "
                          "the checkpoint's reconstruction.num_samples (experiment=recon_prior tunes it), else 1")
    out.add_argument("--compare-cs", action="store_true", help="also run compressed sensing: OUT.cs.nii.gz "
                                                               "and its metrics")
    out.add_argument("--save-zero-filled", action="store_true", help="also write OUT.zero_filled.nii.gz")
    samp = p.add_argument_group("diffusion sampler")
    samp.add_argument("--steps", type=flag_type(KINDS, "steps"), default=None,
                      help="sampler steps (default: the model's diffusion.steps)")
    samp.add_argument("--eta", type=flag_type(KINDS, "eta"), default=None,
                      help="DDIM noise (0 = deterministic); default: the checkpoint's reconstruction.eta, else 0.85")
    samp.add_argument("--refine-tv", type=flag_type(KINDS, "refine_tv"), default=None,
                      help="TV weight (relative to the intensity scale) of a refinement of the samples' mean that "
                           "keeps the measured data exact; 0 = off; default: the checkpoint's "
                           "reconstruction.refine_tv (experiment=recon_prior tunes it), else 0")
    samp.add_argument("--resample", type=flag_type(KINDS, "resample"), default=None,
                      help="time travel: repeat each sampler step whose noise level lies in --resample-sigmas this "
                           "many more times (better agreement of the unmeasured with the measured part, at that many "
                           "more network calls on those steps); 0 = off; default: the checkpoint's "
                           "reconstruction.resample (experiment=recon_prior tunes it), else 0")
    samp.add_argument("--resample-sigmas", type=flag_type(KINDS, "resample_sigmas"),
                      nargs=2, default=None, metavar=("LO", "HI"),
                      help="the noise levels (data in [-1, 1]) whose steps --resample repeats; default: the "
                           "checkpoint's reconstruction.resample_sigmas, else 0.05 5")
    samp.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                      help="the network's arithmetic: bf16 autocast is faster on GPUs and on CPUs with AMX / "
                           "AVX512-BF16 (auto picks it there); default: the checkpoint's reconstruction.precision "
                           "(experiment=recon_prior: auto), else fp32")
    samp.add_argument("--cg-iters", type=flag_type(KINDS, "cg_iters"),
                      default=5, help="conjugate-gradient iterations per data step "
                                      "(multi-coil)")
    samp.add_argument("--batch-size", type=flag_type(KINDS, "batch_size"), default=8, help="slices per network call")
    samp.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    samp.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    samp.add_argument("--allow-resolution-mismatch", action="store_true",
                      help="run a model trained at another slice size (not validated)")
    cs = p.add_argument_group("compressed sensing")
    cs.add_argument("--cs-lambda", type=flag_type(KINDS, "cs_lambda"),
                    default=0.01, help="TV weight, relative to the image scale")
    cs.add_argument("--cs-iters", type=flag_type(KINDS, "cs_iters"), default=300, help="iterations of the TV solver")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def options(args: argparse.Namespace) -> ReconstructOptions:
    """The parsed command line as the library's options (the only place the namespace is read)."""
    return ReconstructOptions(
        input=args.input, output=args.output, checkpoint=args.checkpoint, method=args.method,
        simulate=args.simulate, mask=args.mask, acceleration=args.acceleration,
        center_fraction=args.center_fraction, seed=args.seed, reference=args.reference,
        crop_reference=args.crop_reference, allow_reference_mismatch=args.allow_reference_mismatch,
        num_samples=args.num_samples, compare_cs=args.compare_cs, save_zero_filled=args.save_zero_filled,
        steps=args.steps, eta=args.eta, refine_tv=args.refine_tv, resample=args.resample,
        resample_sigmas=tuple(args.resample_sigmas) if args.resample_sigmas is not None else None,
        precision=args.precision, cg_iters=args.cg_iters, batch_size=args.batch_size, device=args.device,
        use_ema=not args.no_ema, allow_resolution_mismatch=args.allow_resolution_mismatch,
        cs_lambda=args.cs_lambda, cs_iters=args.cs_iters, progress=not args.quiet)


def main(argv: list[str] | None = None) -> dict:
    return run_tool(build_parser, lambda args: reconstruct_file(options(args)), argv, files=("output",))


if __name__ == "__main__":
    main()
