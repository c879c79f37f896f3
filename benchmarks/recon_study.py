"""Reconstruction study: zero-filled vs compressed sensing vs diffusion prior on held-out phantom slices.

    python benchmarks/recon_study.py --out outputs/recon_study [--train-steps 1500] [--size 64]

1. trains a slice model (UNet preset tiny, DDPM) for a few minutes on CPU on generated 2D phantoms
   (benchmarks/phantoms2d.py; replace by the mri domain's built-in data once it exists),
2. tunes the TV weight of the compressed-sensing baseline on a validation volume,
3. undersamples a held-out test volume retrospectively (equispaced, 4x with 8% centre, 8x with 4% centre)
   and reconstructs it through the CLI (`python -m src.reconstruct --simulate ... --compare-cs`),
4. prints a Markdown table of PSNR / SSIM / NMSE (fastMRI convention) and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.phantoms2d import phantom_volume  # noqa: E402
from src.callbacks import RunConfigInCheckpoint  # noqa: E402
from src.module import DiffusionModule  # noqa: E402
from src.mri.io import write_nifti  # noqa: E402
from src.mri.measurement import compressed_sensing, simulate_from_image  # noqa: E402
from src.mri.metrics import psnr  # noqa: E402
from src.reconstruct import main as reconstruct_cli  # noqa: E402

SETTINGS = [(4, 0.08), (8, 0.04)]  # fastMRI's standard (acceleration, centre fraction) pairs


class Slices(Dataset):
    def __init__(self, volume: np.ndarray):
        self.x = torch.from_numpy(volume * 2 - 1)[:, None]  # magnitude [0, 1] -> model range [-1, 1]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return {"x": x.flip(-1) if torch.rand(()) < 0.5 else x}


def train(out: Path, size: int, steps: int, num_train: int, seed: int, batch_size: int) -> Path:
    ckpt = out / "model.ckpt"
    if ckpt.exists():
        print(f"reusing {ckpt}")
        return ckpt
    pl.seed_everything(seed, verbose=False)
    data = phantom_volume(0, num_train, size, seed)
    diffusion = dict(family="ddpm", schedule="linear", num_timesteps=1000, prediction="eps", sampler="ddim",
                     steps=50, clip_denoised=[-1.0, 1.0])
    backbone = dict(name="unet", spatial_dims=2, in_channels=1, preset="tiny")
    module = DiffusionModule(backbone=backbone, diffusion=diffusion, data_shape=[1, size, size],
                             optim=dict(lr=1e-3, warmup_steps=50), ema=dict(decay=0.999), seed=seed)
    run_config = {"domain": {"name": "mri"}, "backbone": backbone, "diffusion": diffusion,
                  "datamodule": {"name": "phantoms2d (benchmarks/recon_study.py)", "mode": "slice",
                                 "resolution": size, "channels": 1},
                  "media": {"kind": "image"}}
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[RunConfigInCheckpoint(run_config)],
                         default_root_dir=str(out))
    loader = DataLoader(Slices(data), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    t0 = time.perf_counter()
    trainer.fit(module, loader)
    print(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s, last loss "
          f"{float(trainer.callback_metrics.get('train/loss', float('nan'))):.4f}")
    trainer.save_checkpoint(ckpt)
    return ckpt


def tune_cs(volume: np.ndarray, acceleration: float, center: float, seed: int) -> float:
    meas = simulate_from_image(volume, "equispaced", acceleration, center, seed)
    scores = {lam: psnr(volume, compressed_sensing(meas, lam=lam, iters=300))
              for lam in (0.003, 0.01, 0.03, 0.1, 0.3)}
    print(f"CS lambda search at {acceleration:g}x: "
          + ", ".join(f"{k:g}: {v:.2f} dB" for k, v in scores.items()))
    return max(scores, key=scores.get)


def save_figure(out: Path, test: np.ndarray, slice_index: int = 0) -> Path:
    """One slice per row block: reference, zero-filled, CS, diffusion mean, 4 x std (per acceleration)."""
    import nibabel as nib
    from PIL import Image

    def load(name):
        return np.asarray(nib.load(out / name).dataobj).transpose(2, 0, 1)[slice_index]

    rows = []
    for acc, _ in SETTINGS:
        stem = f"recon_{acc}x"
        tiles = [test[slice_index], load(f"{stem}.zero_filled.nii.gz"), load(f"{stem}.cs.nii.gz"),
                 load(f"{stem}.nii.gz"), 4 * load(f"{stem}.std.nii.gz")]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.clip(np.concatenate(rows, axis=0), 0, 1)
    img = Image.fromarray((grid * 255).astype(np.uint8))
    path = out / "figure.png"
    img.resize((img.width * 3, img.height * 3), Image.Resampling.NEAREST).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/recon_study")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--num-train", type=int, default=2000)
    ap.add_argument("--test-slices", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50, help="sampler steps")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 is fastest on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = train(out, args.size, args.train_steps, args.num_train, args.seed, args.batch_size)

    base = 10**6  # held-out indices, never seen in training
    val = phantom_volume(base, args.test_slices, args.size, args.seed)
    test = phantom_volume(2 * base, args.test_slices, args.size, args.seed)
    test_path = write_nifti(test, np.diag([1.0, 1.0, 1.0, 1.0]), out / "test_volume.nii.gz")
    results = {}
    for acc, center in SETTINGS:
        lam = tune_cs(val, acc, center, args.seed)
        summary = reconstruct_cli([
            "--checkpoint", str(ckpt), "--input", str(test_path), "--simulate", "--mask", "equispaced",
            "--acceleration", str(acc), "--center-fraction", str(center), "--seed", str(args.seed),
            "--output", str(out / f"recon_{acc}x.nii.gz"), "--steps", str(args.steps),
            "--num-samples", str(args.num_samples), "--compare-cs", "--cs-lambda", str(lam),
            "--save-zero-filled", "--device", "cpu", "--quiet"])
        summary["cs_lambda"] = lam
        results[f"{acc}x"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    save_figure(out, test)
    print("\n| acceleration | method | PSNR (dB) | SSIM | NMSE |\n| --- | --- | --- | --- | --- |")
    names = {"zero_filled": "zero-filled", "compressed_sensing": "compressed sensing (TV)",
             "reconstruction": f"diffusion prior (mean of {args.num_samples})"}
    for key, summary in results.items():
        m = summary["metrics"]
        for name in ("zero_filled", "compressed_sensing", "reconstruction"):
            print(f"| {key} ({summary['acceleration']:.2f}x measured) | {names[name]} | "
                  f"{m[name]['psnr']:.2f} | {m[name]['ssim']:.4f} | {m[name]['nmse']:.4f} |")


if __name__ == "__main__":
    main()
