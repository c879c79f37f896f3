"""One reconstruction from files to files: the library behind ``python -m src.reconstruct``.

    from src.tools.reconstruction.workflow import ReconstructOptions, reconstruct_file
    summary = reconstruct_file(ReconstructOptions(input="scan.h5", output="recon.nii.gz", checkpoint="last.ckpt"))

``ReconstructOptions`` holds every choice with its default (the CLI's flags, one field each); the function
writes OUT (and OUT.std / OUT.zero_filled / OUT.cs on request), OUT.metrics.json, prints what it did, and
returns the summary that went into the JSON. For arrays in memory use ``Reconstructor`` directly.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.domains.mri.fastmri import read_kspace_h5, read_reference, read_slices, write_slices
from src.domains.mri.fft import ifft2c, rss
from src.errors import DataError, writable_folder
from src.fileio import is_nifti, nifti_stem, write_json
from src.options import COUNT, SEED, Number, Whole, check_fields

from ..quality import all_metrics
from .checks import check_geometry, choose_method, tv_complex, volume_checks
from .masks import columns_from_kspace
from .measurement import as_measurement, compressed_sensing, simulate_from_image, undersample, zero_filled
from .reconstructor import Reconstructor

METHODS = ("diffusion", "auto", "cs", "zero-filled")
# zero-filled images of the same region correlate far above this even at 8x (a different region: near 0)
MIN_REFERENCE_AGREEMENT = 0.5


@dataclass
class ReconstructOptions:
    """Everything one reconstruction needs; the defaults are those of ``python -m src.reconstruct``.

    Sampler options left at None take the checkpoint's ``reconstruction.*`` values (``experiment=recon_prior``
    tunes them), else the built-in defaults (see ``Reconstructor``)."""

    input: str | Path                      # fastMRI-style .h5 (kspace, optional mask) or, simulated, a NIfTI volume
    output: str | Path                     # .nii.gz or .nii
    checkpoint: str | Path | None = None   # needed for method "diffusion"
    method: str = "diffusion"              # one of METHODS
    simulate: bool = False                 # undersample the input retrospectively
    mask: str = "equispaced"               # simulated mask: equispaced or random columns
    acceleration: float = 4.0
    center_fraction: float = 0.08
    seed: int = 0                          # of the simulated mask and of the sampler
    reference: str | Path | None = None    # fully sampled reference: writes metrics (simulate: the input itself)
    crop_reference: bool = False           # score the centre of a smaller NIfTI reference
    allow_reference_mismatch: bool = False
    num_samples: int | None = None         # > 1 writes the mean and OUT.std.nii.gz
    compare_cs: bool = False               # also OUT.cs.nii.gz and its metrics
    save_zero_filled: bool = False         # also OUT.zero_filled.nii.gz
    steps: int | None = None
    eta: float | None = None
    refine_tv: float | None = None
    resample: int | None = None
    resample_sigmas: tuple[float, float] | None = None
    precision: str | None = None           # fp32, bf16 or auto
    cg_iters: int = 5
    batch_size: int = 8
    device: str = "auto"
    use_ema: bool = True
    allow_resolution_mismatch: bool = False
    cs_lambda: float = 0.01                # TV weight of compressed sensing, relative to the image scale
    cs_iters: int = 300
    progress: bool = True                  # a progress bar while sampling


def center_crop(volume: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """fastMRI's centre crop of the last two axes (how it compares 640x368 data with 320x320 targets)."""
    h, w = volume.shape[-2:]
    top, left = (h - shape[0]) // 2, (w - shape[1]) // 2
    return volume[..., top:top + shape[0], left:left + shape[1]]


def load_input(opts: ReconstructOptions):
    """Returns (measurement, affine, header, ground truth or None, notes)."""
    inp = Path(opts.input).expanduser()
    if is_nifti(inp):
        if not opts.simulate:
            raise DataError(f"Input {inp} is a NIfTI image, not k-space; add --simulate (with --mask, "
                            "--acceleration, --center-fraction) to undersample it retrospectively.")
        volume, affine, header = read_slices(inp)
        meas = simulate_from_image(volume, opts.mask, opts.acceleration, opts.center_fraction, opts.seed)
        return meas, affine, header, volume, [f"simulated single-coil k-space from {inp.name}"]
    scan = read_kspace_h5(inp)
    source = f"'kspace' in {inp}"
    if opts.simulate:
        kspace = torch.as_tensor(scan.kspace)
        if not bool(columns_from_kspace(kspace).all()):
            raise DataError(f"{source} is already undersampled (some columns are empty); drop --simulate to "
                            "reconstruct it as acquired.")
        full = ifft2c(kspace)
        truth = (rss(full, coil_dim=1) if full.ndim == 4 else full.abs()).numpy()
        meas = undersample(scan.kspace, opts.mask, opts.acceleration, opts.center_fraction, opts.seed, source)
        return meas, scan.affine, None, truth, scan.notes
    try:
        meas = as_measurement(scan.kspace, scan.mask, source=source)
    except ValueError as e:
        raise DataError(f"{e} (file {inp})") from None
    return meas, scan.affine, None, None, scan.notes


def check_paths(opts: ReconstructOptions) -> Path:
    stem = nifti_stem(opts.output)
    out = Path(opts.output).expanduser().resolve()
    writable_folder(out.parent, f"--output {opts.output}")
    inputs = (("--input", opts.input), ("--reference", opts.reference), ("--checkpoint", opts.checkpoint))
    for what, other in inputs:
        if other and Path(other).expanduser().resolve() == out:
            raise DataError(f"--output {out} is the same file as {what}; inputs are never overwritten, "
                            "choose another output name.")
    if opts.method == "diffusion" and not opts.checkpoint:
        raise DataError("--checkpoint is required for --method diffusion (or use --method cs / zero-filled).")
    return stem


# what each numeric option accepts: checked here for the Python API and by the CLI's flags (src.reconstruct)
KINDS = {
    "acceleration": Number(1.0),
    "center_fraction": Number(0.0, 1.0, low_open=True),
    "seed": SEED,
    "num_samples": Whole(1, none_ok=True),
    "steps": Whole(1, none_ok=True),
    "eta": Number(0.0, 1.0, none_ok=True, note="(0: deterministic)"),
    "refine_tv": Number(0.0, 10.0, none_ok=True, note="(0: off)"),
    "resample": Whole(0, 20, none_ok=True, note="(0: off)"),
    "resample_sigmas": Number(0.0, low_open=True, none_ok=True),
    "cg_iters": COUNT,
    "batch_size": COUNT,
    "cs_lambda": Number(0.0),
    "cs_iters": COUNT,
}


def reconstruct_file(opts: ReconstructOptions) -> dict:
    """Reconstruct ``opts.input`` into ``opts.output`` (see the module docstring); returns the summary."""
    check_fields(opts, KINDS)
    stem = check_paths(opts)
    reconstructor = None
    if opts.method == "diffusion" or (opts.method == "auto" and opts.checkpoint):
        # load the model first: a wrong checkpoint fails before any heavy work
        reconstructor = Reconstructor.from_checkpoint(
            opts.checkpoint, device=opts.device, steps=opts.steps, eta=opts.eta, cg_iters=opts.cg_iters,
            batch_size=opts.batch_size, use_ema=opts.use_ema, refine_tv=opts.refine_tv,
            resample=opts.resample, resample_sigmas=opts.resample_sigmas,
            precision=opts.precision, allow_resolution_mismatch=opts.allow_resolution_mismatch)
    meas, affine, header, truth, notes = load_input(opts)
    reference = read_reference(opts.reference) if opts.reference else truth
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    geometry = None
    if reconstructor is not None:
        reconstructor, geometry = check_geometry(reconstructor, meas, affine, input_name=Path(opts.input).name,
                                                 method=opts.method)
    if reconstructor is not None:
        reconstructor.check_resolution(meas.shape)

    t0 = time.perf_counter()
    std = complex_image = auto = None
    method = opts.method
    if method == "auto":
        method, auto = choose_method(reconstructor, meas, cs_lambda=opts.cs_lambda, cs_iters=opts.cs_iters,
                                     seed=opts.seed)
    if method == "diffusion":
        result = reconstructor.run(meas, num_samples=opts.num_samples, seed=opts.seed, progress=opts.progress)
        image, std, zf, complex_image = result.image, result.std, result.zero_filled, result.complex_image
    elif method == "cs":
        complex_image, zf = tv_complex(meas, lam=opts.cs_lambda, iters=opts.cs_iters), zero_filled(meas)
        image = np.abs(complex_image)
    else:
        image = zf = zero_filled(meas)
    seconds = time.perf_counter() - t0
    checks = volume_checks(meas, complex_image, image, zf)
    cs_image = None
    if opts.compare_cs:
        cs_image = image if method == "cs" else compressed_sensing(meas, lam=opts.cs_lambda, iters=opts.cs_iters)

    written = [write_slices(image, affine, opts.output, header)]
    if std is not None:
        written.append(write_slices(std, affine, f"{stem}.std.nii.gz", header))
    if opts.save_zero_filled:
        written.append(write_slices(zf, affine, f"{stem}.zero_filled.nii.gz", header))
    if cs_image is not None:
        written.append(write_slices(cs_image, affine, f"{stem}.cs.nii.gz", header))

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
                       num_samples=reconstructor.num_samples if opts.num_samples is None else opts.num_samples,
                       seed=opts.seed, checkpoint=str(opts.checkpoint))
    if reference is not None:
        summary["metrics"] = metrics_against(reference, image, zf, cs_image, reference_file=opts.reference,
                                             crop_reference=opts.crop_reference,
                                             allow_mismatch=opts.allow_reference_mismatch)
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


def region_agreement(ref: np.ndarray, zf) -> float:
    """Pearson correlation of the reference with the zero-filled magnitude (aliasing keeps it high)."""
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.abs(np.asarray(zf, dtype=np.float64)).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def metrics_against(reference: np.ndarray, image, zf, cs_image, reference_file: str | Path | None = None,
                    crop_reference: bool = False, allow_mismatch: bool = False) -> dict:
    """fastMRI's metrics of the result and its baselines against ``reference`` (``reference_file`` names where it
    came from: None means the fully sampled input)."""
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
        fastmri_target = bool(reference_file) and not is_nifti(Path(reference_file))
        if not (fastmri_target or crop_reference):
            raise DataError(f"The reference slices are {ref.shape[-2]}x{ref.shape[-1]} but the reconstruction's "
                            f"are {image.shape[-2]}x{image.shape[-1]}; pass the reference of the same field of "
                            "view, or add --crop-reference to score the centre region only.")
        crop = ref.shape[-2:]
    prep = (lambda v: center_crop(v, crop)) if crop else (lambda v: v)
    agreement = region_agreement(ref, prep(zf))
    if agreement < MIN_REFERENCE_AGREEMENT and not allow_mismatch:
        raise DataError(f"The reference does not look like the reconstructed region (correlation with the "
                        f"zero-filled image {agreement:.2f}, expected above {MIN_REFERENCE_AGREEMENT}); pass the "
                        "reference of the same scan and slices, or add --allow-reference-mismatch to score it "
                        "anyway.")
    out = {"reference": "the --reference file" if reference_file else "the fully sampled --input",
           "data_range": float(ref.max()),
           "convention": "fastMRI: per volume, data range = reference maximum, SSIM 7x7 mean over slices",
           "cropped_to": list(crop) if crop else None,
           "zero_filled_correlation": round(agreement, 4),
           "reconstruction": all_metrics(ref, prep(image)), "zero_filled": all_metrics(ref, prep(zf))}
    if cs_image is not None:
        out["compressed_sensing"] = all_metrics(ref, prep(cs_image))
    return out
