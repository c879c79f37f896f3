"""Reconstruction study: zero-filled vs compressed sensing vs diffusion prior on held-out MRI slices.

    python benchmarks/recon_study.py --out outputs/recon_study [--train-steps 600] [--test-slices 16]
    python benchmarks/recon_study.py --data real --out outputs/recon_study_real [--train-minutes 10]

``--data real`` (benchmarks/recon_study_real.py): a real human head scan that an installed package ships
(nibabel's ``tests/data/example4d.nii.gz``, 128x96 axial EPI slices of 2 mm), a prior trained with
``experiment=recon_prior`` on its native grid, tuning on a held-out slab and the report on another.

Phantom study (the default):

1. trains a slice model on the mri domain's built-in head phantoms, exactly as a user would:
   `python -m src.train domain=mri datamodule.mode=slice experiment=quickstart diffusion=ddpm logger=none`
   (UNet preset tiny, DDPM; a few minutes on a CPU); an existing OUT/train/checkpoints/last.ckpt is reused,
2. takes test slices from that run's validation phantoms (held out from training) and tunes the TV weight
   of the compressed-sensing baseline on the validation slices of differently seeded phantoms,
3. undersamples the test slices retrospectively (equispaced and random masks, 4x with 8% centre,
   8x with 4% centre) and reconstructs them through the CLI
   (`python -m src.reconstruct --simulate ... --compare-cs`),
4. prints a Markdown table of PSNR / SSIM / NMSE (fastMRI convention), writes OUT/results.json and
   OUT/figure.png (per mask and acceleration, a middle test slice: reference, zero-filled, CS,
   diffusion mean, 4 x standard deviation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.checkpoint import load_checkpoint  # noqa: E402
from src.domains import build_datamodule  # noqa: E402
from src.reconstruct import main as reconstruct_cli  # noqa: E402
from src.tools.reconstruction.io import write_nifti  # noqa: E402
from src.tools.reconstruction.measurement import compressed_sensing, simulate_from_image  # noqa: E402
from src.tools.reconstruction.recon_metrics import psnr  # noqa: E402

SETTINGS = [(4, 0.08), (8, 0.04)]  # fastMRI's standard (acceleration, centre fraction) pairs
MASKS = ("equispaced", "random")
CS_LAMBDAS = (0.003, 0.01, 0.03, 0.1, 0.3)


def train(out: Path, steps: int) -> tuple[Path, float | None]:
    ckpt = out / "train" / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        print(f"reusing {ckpt}")
        return ckpt, None
    cmd = [sys.executable, "-m", "src.train", "domain=mri", "datamodule.mode=slice", "experiment=quickstart",
           "diffusion=ddpm", "logger=none", f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
           f"paths.output_dir={out / 'train'}"]
    print(" ".join(cmd[1:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    print(f"trained {steps} steps in {seconds:.0f} s (setup, validation and samples included)")
    return ckpt, seconds


def held_out_slices(ckpt: Path, seed: int, count: int) -> np.ndarray:
    """``count`` validation slices (evenly spread) of the run's datamodule drawn with ``seed``, magnitude
    in units of each volume's reference intensity (the model's [-1, 1] mapped back by ``(x + 1) / 2``)."""
    config = dict(load_checkpoint(ckpt)["run_config"]["datamodule"])
    dm = build_datamodule(config, seed=seed)
    dm.setup("fit")
    picks = np.linspace(0, len(dm.val_set) - 1, count).round().astype(int)
    return np.stack([(dm.val_set[int(i)]["x"][0].numpy() + 1) / 2 for i in picks]).astype(np.float32)


def tune_cs(volume: np.ndarray, mask: str, acceleration: float, center: float, seed: int) -> float:
    meas = simulate_from_image(volume, mask, acceleration, center, seed)
    scores = {lam: psnr(volume, compressed_sensing(meas, lam=lam, iters=300)) for lam in CS_LAMBDAS}
    print(f"CS lambda search, {mask} {acceleration:g}x: " + ", ".join(f"{k:g}: {v:.2f} dB" for k, v in scores.items()))
    return max(scores, key=scores.get)


def save_figure(out: Path, test: np.ndarray, slice_index: int) -> Path:
    import nibabel as nib
    from PIL import Image

    def load(name):
        return np.asarray(nib.load(out / name).dataobj).transpose(2, 0, 1)[slice_index]

    rows = []
    for mask, (acc, _) in [(m, s) for m in MASKS for s in SETTINGS]:
        stem = f"recon_{mask}_{acc}x"
        tiles = [test[slice_index], load(f"{stem}.zero_filled.nii.gz"), load(f"{stem}.cs.nii.gz"),
                 load(f"{stem}.nii.gz"), 4 * load(f"{stem}.std.nii.gz")]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.clip(np.concatenate(rows, axis=0), 0, 1)
    img = Image.fromarray((grid * 255).astype(np.uint8))
    path = out / "figure.png"
    img.resize((img.width * 3, img.height * 3), Image.Resampling.NEAREST).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["phantoms", "real"], default="phantoms",
                    help="built-in head phantoms, or a real head scan shipped with nibabel")
    ap.add_argument("--train-minutes", type=float, default=10.0,
                    help="--data real: training budget in CPU minutes of one thread (setup included)")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="--data real: training threads; 1: the budget is CPU time of one thread, more: the budget "
                         "is wall-clock minutes on that many threads (needs a quiet machine)")
    ap.add_argument("--train-override", nargs="*", default=[],
                    help="--data real: extra src.train overrides for the prior, e.g. optim.lr=2e-3")
    ap.add_argument("--out", default="outputs/recon_study",
                    help="folder for the training run, reconstructions and results")
    ap.add_argument("--train-steps", type=int, default=600, help="training steps of the slice model")
    ap.add_argument("--test-slices", type=int, default=16, help="held-out slices reconstructed per mask")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps")
    ap.add_argument("--num-samples", type=int, default=4, help="posterior samples averaged per reconstruction")
    ap.add_argument("--seed", type=int, default=0, help="mask and sampler seed")
    args = ap.parse_args()
    if args.data == "real":
        from benchmarks.recon_study_real import run_real

        return run_real(Path(args.out).resolve(), args.train_minutes, args.seed, args.train_override,
                        args.train_threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt, train_seconds = train(out, args.train_steps)

    test = held_out_slices(ckpt, seed=0, count=args.test_slices)  # the training run's held-out phantoms
    tune = held_out_slices(ckpt, seed=1, count=8)                  # other phantoms, for the CS weight only
    spacing = load_checkpoint(ckpt)["run_config"]["datamodule"]["spacing"]
    test_path = write_nifti(test, np.diag([*spacing, 1.0]), out / "test_slices.nii.gz")
    results = {"train_seconds": train_seconds, "checkpoint": str(ckpt)}
    for mask in MASKS:
        for acc, center in SETTINGS:
            lam = tune_cs(tune, mask, acc, center, args.seed)
            summary = reconstruct_cli([
                "--checkpoint", str(ckpt), "--input", str(test_path), "--simulate", "--mask", mask,
                "--acceleration", str(acc), "--center-fraction", str(center), "--seed", str(args.seed),
                "--output", str(out / f"recon_{mask}_{acc}x.nii.gz"), "--steps", str(args.steps),
                "--num-samples", str(args.num_samples), "--compare-cs", "--cs-lambda", str(lam),
                "--save-zero-filled", "--device", "cpu", "--quiet"])
            summary["cs_lambda"] = lam
            results[f"{mask} {acc}x"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    save_figure(out, test, slice_index=len(test) // 2)
    print("\n| mask | acceleration | method | PSNR (dB) | SSIM | NMSE |\n| --- | --- | --- | --- | --- | --- |")
    names = {"zero_filled": "zero-filled", "compressed_sensing": "compressed sensing (TV)",
             "reconstruction": f"diffusion prior (mean of {args.num_samples})"}
    for key, summary in results.items():
        if not isinstance(summary, dict):
            continue
        mask, acc = key.split()
        m = summary["metrics"]
        for name in ("zero_filled", "compressed_sensing", "reconstruction"):
            print(f"| {mask} | {acc} ({summary['acceleration']:.2f}x measured) | {names[name]} | "
                  f"{m[name]['psnr']:.2f} | {m[name]['ssim']:.4f} | {m[name]['nmse']:.4f} |")


if __name__ == "__main__":
    main()
