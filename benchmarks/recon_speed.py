"""Reconstruction speed at 320x320: seconds per slice and per volume for the default number of sampler steps.

    python benchmarks/recon_speed.py [--preset small] [--slices 4] [--batch-size 4] [--steps 50] [--coils 1]
        [--num-samples K] [--refine-tv W] [--resample R] [--device auto|cpu|cuda] [--precision fp32|bf16]
        [--warmup] [--json out.json] [--tiny]

The network has random weights (speed does not depend on training); the k-space is simulated from a
phantom volume, undersampled 4x (equispaced, 8% centre). Prints the machine, the settings and the times
of the diffusion reconstruction and of the two baselines on the same input. `--warmup` first reconstructs one
slice with 2 steps (CUDA context, cuDNN and allocator set-up stay out of the timing); `--precision bf16` runs the
network under bf16 autocast (the Reconstructor's ``precision``, as ``src.reconstruct --precision bf16``);
`--tiny`: 32x32, tiny preset, 3 steps, 2 slices, 5 CS iterations, so the same code runs in seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import TINY_RECON, machine, write_json  # noqa: E402
from src.domains.mri.phantoms import head_phantom  # noqa: E402
from src.module import DiffusionModule  # noqa: E402
from src.tools.reconstruction.fft import fft2c  # noqa: E402
from src.tools.reconstruction.measurement import compressed_sensing, undersample, zero_filled  # noqa: E402
from src.tools.reconstruction.reconstructor import Reconstructor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=320, help="slice side in pixels")
    ap.add_argument("--preset", default="small", help="UNet preset of the slice model (tiny|small|base)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (the DDPM config's default is 50)")
    ap.add_argument("--slices", type=int, default=4, help="slices in the timed volume")
    ap.add_argument("--batch-size", type=int, default=4, help="slices per network call")
    ap.add_argument("--family", default="ddpm",
                    help="diffusion family of the slice model (experiment=recon_prior: edm)")
    ap.add_argument("--num-samples", type=int, default=1, help="posterior samples per slice (recon_prior: 4)")
    ap.add_argument("--refine-tv", type=float, default=0.0,
                    help="TV refinement weight of the samples' mean (recon_prior: the tuned value; 0 = off)")
    ap.add_argument("--resample", type=int, default=0,
                    help="time-travel repeats of the steps with sigma in 0.05-5 (recon_prior: the tuned value; "
                         "0 = off)")
    ap.add_argument("--coils", type=int, default=1, help="simulated receive coils (1: single-coil)")
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (unset: torch's choice)")
    ap.add_argument("--cs-iters", type=int, default=300, help="iterations of the compressed-sensing baseline")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="network under bf16 autocast")
    ap.add_argument("--warmup", action="store_true", help="reconstruct one slice with 2 steps before timing")
    ap.add_argument("--json", default=None, help="also write the settings and times to this JSON file")
    ap.add_argument("--tiny", action="store_true", help="32x32, tiny preset, 3 steps: the same code in seconds")
    args = ap.parse_args()
    if args.tiny:
        vars(args).update(TINY_RECON)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size
    module = DiffusionModule(backbone=dict(name="unet", spatial_dims=2, in_channels=1, preset=args.preset,
                                           use_flash_attention=True),  # as the mri domain configures it
                             diffusion=dict(family=args.family, steps=args.steps), data_shape=[1, size, size])
    rec = Reconstructor(module, {"domain": {"name": "mri"}}, device=args.device, steps=args.steps,
                        batch_size=args.batch_size, refine_tv=args.refine_tv, resample=args.resample,
                        precision=args.precision)  # the Reconstructor's own autocast, as src.reconstruct runs it
    image = torch.from_numpy(np.stack([head_phantom((size, size), seed=i) for i in range(args.slices)]))
    image = image.to(torch.complex64)
    if args.coils > 1:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        angles = torch.arange(args.coils) * 2 * np.pi / args.coils
        sens = torch.stack([torch.exp(-((yy - torch.sin(a)) ** 2 + (xx - torch.cos(a)) ** 2))
                            for a in angles]).to(torch.complex64)
        image = sens[None] * image[:, None]
    meas = undersample(fft2c(image), "equispaced", 4, 0.08, 0)
    if args.warmup:
        warm = Reconstructor(module, {"domain": {"name": "mri"}}, device=rec.device, steps=2, batch_size=1,
                             precision=args.precision)
        warm.run(undersample(fft2c(image[:1]), "equispaced", 4, 0.08, 0))

    print(f"machine: {platform.machine()} {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {rec.device}")
    print(f"model: unet preset {args.preset}, {module.num_parameters() / 1e6:.2f}M parameters; "
          f"{args.slices} slices {size}x{size}, {args.coils} coil(s), {args.steps} steps, "
          f"{args.num_samples} posterior sample(s), {args.resample} time-travel repeat(s), "
          f"batch {args.batch_size}")
    t0 = time.perf_counter()
    zero_filled(meas)
    t_zf = time.perf_counter() - t0
    t0 = time.perf_counter()
    compressed_sensing(meas, iters=args.cs_iters, batch_size=args.batch_size)
    t_cs = time.perf_counter() - t0
    result = rec.run(meas, num_samples=args.num_samples, progress=True)
    n = args.slices
    t_diff = result.seconds
    print(f"zero-filled:           {t_zf / n:8.3f} s/slice {t_zf:8.2f} s/volume ({n} slices)")
    print(f"compressed sensing:    {t_cs / n:8.3f} s/slice {t_cs:8.2f} s/volume ({args.cs_iters} iterations)")
    print(f"diffusion ({args.steps} steps): {t_diff / n:8.3f} s/slice {t_diff:8.2f} s/volume")
    settings = {k: getattr(args, k) for k in ("size", "preset", "steps", "slices", "batch_size", "coils",
                                               "cs_iters", "precision", "num_samples", "refine_tv", "resample")}
    write_json(args.json, {"machine": machine(), "device": str(rec.device), "settings": settings,
                           "parameters_m": module.num_parameters() / 1e6,
                           "finite": bool(np.isfinite(result.image).all()),
                           "seconds_per_slice": {"diffusion": t_diff / n, "compressed_sensing": t_cs / n,
                                                 "zero_filled": t_zf / n}})


if __name__ == "__main__":
    main()
