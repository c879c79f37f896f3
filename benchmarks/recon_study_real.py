"""Real-anatomy reconstruction study (``python benchmarks/recon_study.py --data real``).

Data: nibabel's ``tests/data/example4d.nii.gz``, a real human head (axial EPI, 128x96 slices of 2 x 2 mm,
24 slices, 2 time points), shipped with nibabel (already a dependency). Slice positions are split into
contiguous slabs with one-slice gaps so no neighbour of a test slice is trained on:

    train: positions 0-2, 8-12, 19-23 (both time points)   tune: 4-6   test: 14-17 (first time point)

1. trains ``python -m src.train domain=mri experiment=recon_prior datamodule.path=OUT/data/train`` on the native
   grid with one thread until it has used ``--train-minutes`` of CPU time (then SIGTERM: the run saves
   last.ckpt); an existing checkpoint is reused,
2. tunes on the tune slab at 4x equispaced: the TV weight, the sampler's steps and eta, the posterior samples and
   time-travel repeats (``--resample``), and the TV refinement of the samples' mean (``--refine-tv``; 0 = the
   plain mean),
3. reconstructs the test slab at 4x (8 % centre) and 8x (4 % centre) equispaced through the CLI, and prints
   PSNR / SSIM / NMSE of zero-filled, TV and diffusion, the seconds per slice, and the tuning tables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.inverse.sampler import RESAMPLE_SIGMAS  # noqa: E402
from src.reconstruct import Reconstructor  # noqa: E402
from src.reconstruct import main as reconstruct_cli  # noqa: E402
from src.tools.reconstruction.io import write_nifti  # noqa: E402
from src.tools.reconstruction.measurement import compressed_sensing, simulate_from_image  # noqa: E402
from src.tools.reconstruction.recon_metrics import psnr  # noqa: E402

TRAIN = [*range(0, 3), *range(8, 13), *range(19, 24)]
TUNE, TEST = [4, 5, 6], [14, 15, 16, 17]
SETTINGS = [(4, 0.08), (8, 0.04)]
CS_LAMBDAS = (0.001, 0.003, 0.01, 0.03, 0.1)
REFINE_WEIGHTS = (0.0, 0.1, 0.15, 0.2, 0.3, 0.5)
DEFAULT_REFINE = 0.3  # the refinement weight while the sample count and the time-travel repeats are chosen
RESAMPLES = (0, 1, 2, 4)
SECONDS_PER_SLICE = 10.0  # the speed target for a 128x128 slice at the default settings, scaled by area below


def source() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"


def real_data(out: Path) -> tuple[Path, Path, Path]:
    import nibabel as nib

    img = nib.load(source())
    data = np.asarray(img.dataobj, dtype=np.float32)  # (128, 96, 24, 2)
    folder = out / "data"
    train = np.concatenate([data[:, :, TRAIN, t] for t in range(data.shape[3])], axis=2)
    paths = []
    for name, vol in (("train/example4d_train.nii.gz", train), ("tune.nii.gz", data[:, :, TUNE, 0]),
                      ("test.nii.gz", data[:, :, TEST, 0])):
        paths.append(write_nifti(vol.transpose(2, 0, 1), img.affine, folder / name))
    return paths[0].parent, paths[1], paths[2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (Linux ``/proc``), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_with_cpu_budget(cmd: list[str], cpu_seconds_budget: float, env: dict | None = None,
                        wall_seconds_budget: float = float("inf")) -> dict:
    """Run ``cmd`` until it ends or has used ``cpu_seconds_budget`` of CPU time, then SIGTERM it (src.train
    stops at the next step and saves last.ckpt). CPU time, not wall time, is the budget: on a machine shared
    with other jobs a wall-clock limit would measure the load, not the method."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    used, stopped = 0.0, False
    while proc.poll() is None:
        try:
            used = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        if (used >= cpu_seconds_budget or time.perf_counter() - t0 >= wall_seconds_budget) and not stopped:
            proc.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.5)
    # 143: stopped as asked; -15: the signal arrived while the run was already shutting down
    if proc.wait() != 0 and not (stopped and proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM)):
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return {"cpu_seconds": round(used), "wall_seconds": round(time.perf_counter() - t0), "stopped_by_budget": stopped}


def train(out: Path, data: Path, minutes: float, overrides: list[str] = (), threads: int = 1) -> tuple[Path, dict]:
    """``minutes`` of one core's CPU time (1 thread), or ``minutes`` of wall-clock time on ``threads`` > 1 threads
    (a quiet machine), the setup included."""
    ckpt = out / "train" / "checkpoints" / "last.ckpt"
    record = out / "train" / "train_info.json"  # how the reused prior was trained, for results.json
    if ckpt.exists():
        print(f"reusing {ckpt}")
        return ckpt, {**(json.loads(record.read_text()) if record.exists() else {}), "reused": True}
    cmd = [sys.executable, "-m", "src.train", "domain=mri", "experiment=recon_prior", f"datamodule.path={data}",
           "logger=none", "trainer.max_steps=100000", "trainer.enable_progress_bar=false",
           "checkpoint.every_n_steps=100", "sampling.every_n_steps=100000", "trainer.val_check_interval=100000",
           "optim.warmup_steps=20", f"paths.output_dir={out / 'train'}", *overrides]
    print(" ".join(cmd[1:]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    if threads == 1:
        info = run_with_cpu_budget(cmd, minutes * 60, env)
    else:
        info = run_with_cpu_budget(cmd, float("inf"), env, wall_seconds_budget=minutes * 60)
    import torch

    step = int(torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"])
    info.update(train_steps=step, threads=threads, load_before=round(load_before, 2),
                load_after=round(os.getloadavg()[0], 2), overrides=list(overrides))
    record.write_text(json.dumps(info, indent=2) + "\n")
    print(f"trained {step} steps: {info}")
    return ckpt, info


def load(path: Path) -> np.ndarray:
    from src.tools.reconstruction.io import read_nifti

    return read_nifti(path)[0]


def tune(ckpt: Path, volume: np.ndarray, seed: int) -> dict:
    """4x equispaced on the tune slab: every setting's PSNR and time (one change from the defaults at a time).

    Order: TV weight of the baseline; sampler steps and eta (one sample, no refinement); the number of posterior
    samples together with the time-travel repeats (``--resample``), with the preset's refinement and within the
    time budget; last the refinement's weight."""
    meas = simulate_from_image(volume, "equispaced", 4, 0.08, seed)
    results: dict = {"cs": {}, "steps": {}, "eta": {}, "samples": {}, "refine_tv": {}}
    for lam in CS_LAMBDAS:
        results["cs"][lam] = round(psnr(volume, compressed_sensing(meas, lam=lam, iters=300)), 2)
    print("TV weight:", results["cs"])

    def score(steps=None, eta=0.85, samples=1, refine=0.0, resample=0):
        """PSNR on the tune slab and seconds per slice (one thread)."""
        rec = Reconstructor.from_checkpoint(ckpt, device="cpu", steps=steps, eta=eta, refine_tv=refine,
                                            resample=resample, resample_sigmas=RESAMPLE_SIGMAS)
        t0 = time.perf_counter()
        image = rec.run(meas, num_samples=samples, seed=seed).image
        return round(psnr(volume, image), 2), round((time.perf_counter() - t0) / len(volume), 2)

    # the best that keeps within the 10 s per 128x128 slice (measured here, one thread)
    limit = SECONDS_PER_SLICE * volume.shape[-2] * volume.shape[-1] / (128 * 128)  # time grows with the area

    def best(table: dict, timed: bool = False):
        """The key with the highest PSNR (the first, i.e. the cheapest, on a tie), within the time limit."""
        keys = [k for k, (_, sec) in table.items() if not timed or sec <= limit] or list(table)[:1]
        return max(keys, key=lambda k: table[k][0])

    for steps in (10, 20, 40):
        results["steps"][steps] = score(steps=steps)
    print("steps (PSNR, s/slice):", results["steps"])
    best_steps = best(results["steps"])
    for eta in (0.0, 0.5, 0.85, 1.0):
        results["eta"][eta] = score(steps=best_steps, eta=eta)
    print(f"eta at {best_steps} steps:", results["eta"])
    best_eta = best(results["eta"])
    # posterior samples and time-travel repeats trade against each other for the same time: chosen together
    for samples in (1, 4, 8):
        for repeats in RESAMPLES:
            results["samples"][f"{samples} x {repeats}"] = score(steps=best_steps, eta=best_eta, samples=samples,
                                                                  refine=DEFAULT_REFINE, resample=repeats)
    print(f"posterior samples x time-travel repeats on sigma {RESAMPLE_SIGMAS[0]:g}-{RESAMPLE_SIGMAS[1]:g} "
          f"(refined with {DEFAULT_REFINE}):", results["samples"])
    best_samples, best_resample = (int(v) for v in best(results["samples"], timed=True).split(" x "))
    for weight in REFINE_WEIGHTS:
        results["refine_tv"][weight] = score(steps=best_steps, eta=best_eta, samples=best_samples, refine=weight,
                                             resample=best_resample)
    print(f"TV refinement of the mean of {best_samples}:", results["refine_tv"])
    results["chosen"] = {"cs_lambda": max(results["cs"], key=results["cs"].get), "steps": best_steps,
                         "eta": best_eta, "num_samples": best_samples, "resample": best_resample,
                         "resample_sigmas": list(RESAMPLE_SIGMAS), "refine_tv": best(results["refine_tv"])}
    return results


def figure(out: Path, test: np.ndarray, index: int) -> Path:
    import nibabel as nib
    from PIL import Image

    rows = []
    for acc, _ in SETTINGS:
        stem = out / f"recon_{acc}x"
        tiles = [test[index]] + [np.asarray(nib.load(f"{stem}{s}.nii.gz").dataobj).transpose(2, 0, 1)[index]
                                 for s in (".zero_filled", ".cs", "")]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = np.clip(grid / np.percentile(test, 99.5), 0, 1)
    img = Image.fromarray((grid * 255).astype(np.uint8))
    path = out / "figure.png"
    img.resize((img.width * 2, img.height * 2), Image.Resampling.NEAREST).save(path)
    return path


def run_real(out: Path, minutes: float, seed: int, overrides: list[str] = (), threads: int = 1) -> None:
    out.mkdir(parents=True, exist_ok=True)
    train_dir, tune_path, test_path = real_data(out)
    ckpt, info = train(out, train_dir, minutes, overrides, threads)
    import torch

    torch.set_num_threads(1)  # tuning and test on one thread: the time limit of the tuning is for one core
    tuning = tune(ckpt, load(tune_path), seed)
    chosen = tuning["chosen"]
    results = {**info, "source": str(source().name), "tuning": tuning, "test": {}}
    def cli(name: str, acc: int, center: float, *extra: str) -> dict:
        """src.reconstruct on the test slab with the chosen sampler settings, plus ``extra``."""
        return reconstruct_cli([
            "--checkpoint", str(ckpt), "--input", str(test_path), "--simulate", "--mask", "equispaced",
            "--acceleration", str(acc), "--center-fraction", str(center), "--seed", str(seed),
            "--output", str(out / f"{name}_{acc}x.nii.gz"), "--steps", str(chosen["steps"]),
            "--eta", str(chosen["eta"]), "--num-samples", str(chosen["num_samples"]),
            "--resample", str(chosen["resample"]), "--resample-sigmas", *map(str, chosen["resample_sigmas"]),
            "--cs-lambda", str(chosen["cs_lambda"]), "--device", "cpu", "--quiet", *extra])

    for acc, center in SETTINGS:
        results["test"][f"{acc}x"] = cli("recon", acc, center, "--refine-tv", str(chosen["refine_tv"]), "--compare-cs",
                                         "--save-zero-filled")
        if chosen["refine_tv"] > 0:  # the samples' mean without the refinement, for comparison
            plain = cli("plain", acc, center, "--refine-tv", "0")
            results["test"][f"{acc}x plain"] = {k: plain[k] for k in ("metrics", "seconds_per_slice", "checks")}
        auto = cli("auto", acc, center, "--method", "auto", "--refine-tv", str(chosen["refine_tv"]))
        results["test"][f"{acc}x auto"] = {k: auto[k] for k in ("method", "auto", "checks", "metrics")}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    figure(out, load(test_path), index=1)
    print("\nchosen on the tune slab:", chosen)
    print("\n| acceleration | method | PSNR (dB) | SSIM | NMSE |\n| --- | --- | --- | --- | --- |")
    names = {"zero_filled": "zero-filled", "compressed_sensing": "TV (compressed sensing)",
             "reconstruction": "diffusion prior"}
    for key, summary in results["test"].items():
        if key.endswith("plain"):
            m = summary["metrics"]["reconstruction"]
            print(f"| {key[:-6]} | diffusion prior, mean without TV refinement | {m['psnr']:.2f} | {m['ssim']:.4f} | "
                  f"{m['nmse']:.4f} |")
            continue
        if key.endswith("auto"):
            print(f"--method auto at {key}: chose {summary['method']}, PSNR "
                  f"{summary['metrics']['reconstruction']['psnr']:.2f} dB, held-out errors {summary['auto']}")
            continue
        m = summary["metrics"]
        for name in ("zero_filled", "compressed_sensing", "reconstruction"):
            print(f"| {key} ({summary['acceleration']:.2f}x measured) | {names[name]} | {m[name]['psnr']:.2f} | "
                  f"{m[name]['ssim']:.4f} | {m[name]['nmse']:.4f} |")
        print(f"diffusion {key}: {summary['seconds_per_slice']:.2f} s per slice, checks {summary['checks']}")
