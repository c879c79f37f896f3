"""MRI reconstruction from undersampled k-space with a trained diffusion prior (and classical baselines).

    python -m src.reconstruct --checkpoint model.ckpt --input scan.h5 --output recon.nii.gz
    python -m src.reconstruct --checkpoint model.ckpt --input brain.nii.gz --simulate --mask equispaced \\
        --acceleration 4 --center-fraction 0.08 --seed 0 --output recon.nii.gz --num-samples 4

Python: ``Reconstructor.from_checkpoint(path, device="cpu").reconstruct(kspace, mask)`` returns the image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from datamodules.base import DataError

from .cli import run_tool
from .errors import writable_folder
from .tools.reconstruction.checks import check_geometry, choose_method, tv_complex, volume_checks
from .tools.reconstruction.fft import ifft2c, rss
from .tools.reconstruction.io import (
    is_nifti,
    output_stem,
    read_kspace_h5,
    read_nifti,
    read_reference,
    write_json,
    write_nifti,
)
from .tools.reconstruction.masks import MASK_KINDS, columns_from_kspace
from .tools.reconstruction.measurement import (
    as_measurement,
    compressed_sensing,
    simulate_from_image,
    undersample,
    zero_filled,
)
from .tools.reconstruction.recon_metrics import all_metrics
from .tools.reconstruction.reconstructor import Reconstruction, Reconstructor

__all__ = ["Reconstruction", "Reconstructor", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m src.reconstruct", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", help="trained slice model (.ckpt from src.train domain=mri); "
                                        "needed for --method diffusion")
    p.add_argument("--input", required=True, help="fastMRI-style .h5 (kspace, optional mask) or, with "
                                                  "--simulate, a NIfTI magnitude volume")
    p.add_argument("--output", required=True, help="reconstructed volume, .nii.gz or .nii")
    p.add_argument("--method", choices=["diffusion", "auto", "cs", "zero-filled"], default="diffusion",
                   help="diffusion prior, auto (the diffusion prior unless k-space cross-validation or the "
                        "geometry check finds it out of its domain: then TV or zero-filled, with a warning), "
                        "total-variation compressed sensing, or zero-filled inverse FFT")
    sim = p.add_argument_group("retrospective undersampling (--simulate)")
    sim.add_argument("--simulate", action="store_true",
                     help="undersample the input retrospectively (NIfTI magnitude or fully sampled .h5)")
    sim.add_argument("--mask", choices=sorted(MASK_KINDS), default="equispaced",
                     help="which k-space columns are kept: evenly spaced or drawn at random")
    sim.add_argument("--acceleration", type=float, default=4.0,
                     help="undersampling factor: one in this many k-space columns is kept")
    sim.add_argument("--center-fraction", type=float, default=0.08,
                     help="share of the central (low-frequency) k-space columns always kept")
    sim.add_argument("--seed", type=int, default=0, help="seed of the random mask and of the sampler")
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
    out.add_argument("--num-samples", type=int, default=None,
                     help="posterior samples; >1 writes their mean and OUT.std.nii.gz (per-voxel std); default: "
                          "the checkpoint's reconstruction.num_samples (experiment=recon_prior tunes it), else 1")
    out.add_argument("--compare-cs", action="store_true", help="also run compressed sensing: OUT.cs.nii.gz "
                                                               "and its metrics")
    out.add_argument("--save-zero-filled", action="store_true", help="also write OUT.zero_filled.nii.gz")
    samp = p.add_argument_group("diffusion sampler")
    samp.add_argument("--steps", type=int, default=None,
                      help="sampler steps (default: the model's diffusion.steps)")
    samp.add_argument("--eta", type=float, default=None, help="DDIM noise (0 = deterministic); default: the "
                                                              "checkpoint's reconstruction.eta, else 0.85")
    samp.add_argument("--refine-tv", type=float, default=None,
                      help="TV weight (relative to the intensity scale) of a refinement of the samples' mean that "
                           "keeps the measured data exact; 0 = off; default: the checkpoint's "
                           "reconstruction.refine_tv (experiment=recon_prior tunes it), else 0")
    samp.add_argument("--resample", type=int, default=None,
                      help="time travel: repeat each sampler step whose noise level lies in --resample-sigmas this "
                           "many more times (better agreement of the unmeasured with the measured part, at that many "
                           "more network calls on those steps); 0 = off; default: the checkpoint's "
                           "reconstruction.resample (experiment=recon_prior tunes it), else 0")
    samp.add_argument("--resample-sigmas", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                      help="the noise levels (data in [-1, 1]) whose steps --resample repeats; default: the "
                           "checkpoint's reconstruction.resample_sigmas, else 0.05 5")
    samp.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                      help="the network's arithmetic: bf16 autocast is faster on GPUs and on CPUs with AMX / "
                           "AVX512-BF16 (auto picks it there); default: the checkpoint's reconstruction.precision "
                           "(experiment=recon_prior: auto), else fp32")
    samp.add_argument("--cg-iters", type=int, default=5, help="conjugate-gradient iterations per data step "
                                                              "(multi-coil)")
    samp.add_argument("--batch-size", type=int, default=8, help="slices per network call")
    samp.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    samp.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    samp.add_argument("--allow-resolution-mismatch", action="store_true",
                      help="run a model trained at another slice size (not validated)")
    cs = p.add_argument_group("compressed sensing")
    cs.add_argument("--cs-lambda", type=float, default=0.01, help="TV weight, relative to the image scale")
    cs.add_argument("--cs-iters", type=int, default=300, help="iterations of the TV solver")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def center_crop(volume: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """fastMRI's centre crop of the last two axes (how it compares 640x368 data with 320x320 targets)."""
    h, w = volume.shape[-2:]
    top, left = (h - shape[0]) // 2, (w - shape[1]) // 2
    return volume[..., top:top + shape[0], left:left + shape[1]]


def load_input(args):
    """Returns (measurement, affine, header, ground truth or None, notes)."""
    inp = Path(args.input).expanduser()
    if is_nifti(inp):
        if not args.simulate:
            raise DataError(f"Input {inp} is a NIfTI image, not k-space; add --simulate (with --mask, "
                            "--acceleration, --center-fraction) to undersample it retrospectively.")
        volume, affine, header = read_nifti(inp)
        meas = simulate_from_image(volume, args.mask, args.acceleration, args.center_fraction, args.seed)
        return meas, affine, header, volume, [f"simulated single-coil k-space from {inp.name}"]
    scan = read_kspace_h5(inp)
    source = f"'kspace' in {inp}"
    if args.simulate:
        kspace = torch.as_tensor(scan.kspace)
        if not bool(columns_from_kspace(kspace).all()):
            raise DataError(f"{source} is already undersampled (some columns are empty); drop --simulate to "
                            "reconstruct it as acquired.")
        full = ifft2c(kspace)
        truth = (rss(full, coil_dim=1) if full.ndim == 4 else full.abs()).numpy()
        meas = undersample(scan.kspace, args.mask, args.acceleration, args.center_fraction, args.seed, source)
        return meas, scan.affine, None, truth, scan.notes
    try:
        meas = as_measurement(scan.kspace, scan.mask, source=source)
    except ValueError as e:
        raise DataError(f"{e} (file {inp})") from None
    return meas, scan.affine, None, None, scan.notes


def check_paths(args) -> Path:
    stem = output_stem(args.output)
    out = Path(args.output).expanduser().resolve()
    writable_folder(out.parent, f"--output {args.output}")
    inputs = (("--input", args.input), ("--reference", args.reference), ("--checkpoint", args.checkpoint))
    for what, other in inputs:
        if other and Path(other).expanduser().resolve() == out:
            raise DataError(f"--output {out} is the same file as {what}; inputs are never overwritten, "
                            "choose another output name.")
    if args.method == "diffusion" and not args.checkpoint:
        raise DataError("--checkpoint is required for --method diffusion (or use --method cs / zero-filled).")
    return stem


def run(args) -> dict:
    stem = check_paths(args)
    reconstructor = None
    if args.method == "diffusion" or (args.method == "auto" and args.checkpoint):
        # load the model first: a wrong checkpoint fails before any heavy work
        reconstructor = Reconstructor.from_checkpoint(
            args.checkpoint, device=args.device, steps=args.steps, eta=args.eta, cg_iters=args.cg_iters,
            batch_size=args.batch_size, use_ema=not args.no_ema, refine_tv=args.refine_tv,
            resample=args.resample, resample_sigmas=args.resample_sigmas,
            precision=args.precision, allow_resolution_mismatch=args.allow_resolution_mismatch)
    meas, affine, header, truth, notes = load_input(args)
    reference = read_reference(args.reference) if args.reference else truth
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    geometry = None
    if reconstructor is not None:
        reconstructor, geometry = check_geometry(reconstructor, meas, affine, args)
    if reconstructor is not None:
        reconstructor.check_resolution(meas.shape)

    t0 = time.perf_counter()
    std = complex_image = auto = None
    method = args.method
    if method == "auto":
        method, auto = choose_method(reconstructor, meas, args)
    if method == "diffusion":
        result = reconstructor.run(meas, num_samples=args.num_samples, seed=args.seed,
                                   progress=not args.quiet)
        image, std, zf, complex_image = result.image, result.std, result.zero_filled, result.complex_image
    elif method == "cs":
        complex_image, zf = tv_complex(meas, lam=args.cs_lambda, iters=args.cs_iters), zero_filled(meas)
        image = np.abs(complex_image)
    else:
        image = zf = zero_filled(meas)
    seconds = time.perf_counter() - t0
    checks = volume_checks(meas, complex_image, image, zf)
    cs_image = None
    if args.compare_cs:
        cs_image = image if method == "cs" else compressed_sensing(meas, lam=args.cs_lambda,
                                                                         iters=args.cs_iters)

    written = [write_nifti(image, affine, args.output, header)]
    if std is not None:
        written.append(write_nifti(std, affine, f"{stem}.std.nii.gz", header))
    if args.save_zero_filled:
        written.append(write_nifti(zf, affine, f"{stem}.zero_filled.nii.gz", header))
    if cs_image is not None:
        written.append(write_nifti(cs_image, affine, f"{stem}.cs.nii.gz", header))

    summary = {"method": method, "slices": meas.num_slices, "shape": list(meas.shape),
               "coils": int(meas.kspace.shape[1]) if meas.multicoil else 1,
               "acceleration": round(meas.acceleration, 3), "seconds": round(seconds, 2),
               "seconds_per_slice": round(seconds / meas.num_slices, 3)}
    summary["checks"] = checks
    if geometry is not None:
        summary["geometry"] = geometry
    if auto is not None:
        summary["auto"] = auto
    if method == "diffusion":
        summary.update(steps=reconstructor.steps, eta=reconstructor.eta, refine_tv=reconstructor.refine_tv,
                       resample=reconstructor.resample, resample_sigmas=list(reconstructor.resample_sigmas),
                       precision=reconstructor.precision,
                       num_samples=reconstructor.num_samples if args.num_samples is None else args.num_samples,
                       seed=args.seed, checkpoint=str(args.checkpoint))
    if reference is not None:
        summary["metrics"] = metrics_against(reference, image, zf, cs_image, args)
    written.append(write_json(summary, f"{stem}.metrics.json"))
    n = meas.num_slices
    coils = summary["coils"]
    print(f"reconstructed {n} slice{'s' * (n != 1)} ({meas.shape[0]}x{meas.shape[1]}, {coils} "
          f"coil{'s' * (coils != 1)}, {summary['acceleration']:.1f}x undersampled) with {method} in "
          f"{seconds:.1f} s ({seconds / n:.2f} s per slice)")
    residual = checks.get("data_residual")
    print(f"  data-consistency residual {'n/a (zero-filled)' if residual is None else f'{residual:.2e}'}"
          f" (||M F x - y|| / ||y||); moved {checks['moved_from_zero_filled']:.3f} from zero-filled "
          "(||x - zero-filled|| / ||zero-filled||)")
    if "metrics" in summary:
        for key, m in summary["metrics"].items():
            if isinstance(m, dict):
                print(f"  {key:<20} PSNR {m['psnr']:6.2f} dB   SSIM {m['ssim']:.4f}   NMSE {m['nmse']:.5f}")
    for path in written:
        print(f"wrote {path}")
    return summary


# zero-filled images of the same region correlate far above this even at 8x (a different region: near 0)
MIN_REFERENCE_AGREEMENT = 0.5


def region_agreement(ref: np.ndarray, zf) -> float:
    """Pearson correlation of the reference with the zero-filled magnitude (aliasing keeps it high)."""
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.abs(np.asarray(zf, dtype=np.float64)).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def metrics_against(reference: np.ndarray, image, zf, cs_image, args) -> dict:
    ref = np.asarray(reference, dtype=np.float32)
    if ref.shape[0] != image.shape[0]:
        raise DataError(f"The reference has {ref.shape[0]} slices but the reconstruction has "
                        f"{image.shape[0]}; pass the reference of the same scan.")
    crop = None
    if ref.shape[-2:] != image.shape[-2:]:
        if ref.shape[-2] > image.shape[-2] or ref.shape[-1] > image.shape[-1]:
            raise DataError(f"The reference slices are {ref.shape[-2]}x{ref.shape[-1]}, larger than the "
                            f"reconstruction's {image.shape[-2]}x{image.shape[-1]}; pass the reference of "
                            "the same scan.")
        fastmri_target = bool(args.reference) and not is_nifti(Path(args.reference))
        if not (fastmri_target or args.crop_reference):
            raise DataError(f"The reference slices are {ref.shape[-2]}x{ref.shape[-1]} but the reconstruction's "
                            f"are {image.shape[-2]}x{image.shape[-1]}; pass the reference of the same field of "
                            "view, or add --crop-reference to score the centre region only.")
        crop = ref.shape[-2:]
    prep = (lambda v: center_crop(v, crop)) if crop else (lambda v: v)
    agreement = region_agreement(ref, prep(zf))
    if agreement < MIN_REFERENCE_AGREEMENT and not args.allow_reference_mismatch:
        raise DataError(f"The reference does not look like the reconstructed region (correlation with the "
                        f"zero-filled image {agreement:.2f}, expected above {MIN_REFERENCE_AGREEMENT}); pass the "
                        "reference of the same scan and slices, or add --allow-reference-mismatch to score it "
                        "anyway.")
    out = {"reference": "the --reference file" if args.reference else "the fully sampled --input",
           "data_range": float(ref.max()),
           "convention": "fastMRI: per volume, data range = reference maximum, SSIM 7x7 mean over slices",
           "cropped_to": list(crop) if crop else None,
           "zero_filled_correlation": round(agreement, 4),
           "reconstruction": all_metrics(ref, prep(image)), "zero_filled": all_metrics(ref, prep(zf))}
    if cs_image is not None:
        out["compressed_sensing"] = all_metrics(ref, prep(cs_image))
    return out


def main(argv: list[str] | None = None) -> dict:
    return run_tool(build_parser, run, argv)


if __name__ == "__main__":
    main()
