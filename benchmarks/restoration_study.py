"""The study behind docs/studies/restoration.md: tiny priors trained here, restoration and anomaly scores on
held-out data.

    python benchmarks/restoration_study.py data    OUT   # write the training sets
    python benchmarks/restoration_study.py train   OUT [image audio mri]  # tiny priors (python -m src.train, CPU)
    python benchmarks/restoration_study.py eval    OUT [mri images audio]  # OUT/results.json

Images: scikit-image's bundled LFW face subset (200 faces, 25x25 gray, upscaled to 32x32): faces 0-179 train
the prior, faces 180-199 are held out. Audio: the built-in synthetic sounds; held-out clips use indices the
training set never draws. MRI: the built-in head phantoms drawn without lesions train the prior; held-out
phantoms get planted lesions (the anomalies) or stay normal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MRI_SHAPE = (32, 32, 16)   # RAS, 3 mm voxels; slices along axis 2 are 32x32, the prior's size
STEPS = {"image": 300, "audio": 150, "mri": 300}


class _NoLesions:
    """A numpy Generator whose lesion count draw (``integers(0, 4)``) is 0: lesion-free phantoms."""

    def __init__(self, rng):
        self._rng = rng

    def integers(self, low, high=None, *a, **k):
        return 0 if (low, high) == (0, 4) else self._rng.integers(low, high, *a, **k)

    def __getattr__(self, name):
        return getattr(self._rng, name)


def normal_phantom(seed: int) -> np.ndarray:
    from datamodules import phantoms

    real = np.random.default_rng
    with mock.patch.object(phantoms.np.random, "default_rng", lambda s: _NoLesions(real(s))):
        return phantoms.head_phantom(MRI_SHAPE, seed=seed, contrast="t1")


def plant_lesions(volume: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-3 ellipsoidal lesions inside the brain, brighter or darker than it; returns (volume, lesion mask)."""
    rng = np.random.default_rng(10_000 + seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in volume.shape], indexing="ij"))
    brain = volume > 0.35 * np.percentile(volume, 99.5)
    out, mask = volume.copy(), np.zeros(volume.shape, bool)
    inside = np.argwhere(brain & (np.abs(grid).max(0) < 0.5))
    for _ in range(rng.integers(1, 4)):
        c = grid[(slice(None), *inside[rng.integers(len(inside))])]
        r = rng.uniform(0.12, 0.22, 3)
        les = (((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) <= 1
        out[les] = rng.choice([0.15, 1.2]) * rng.uniform(0.9, 1.1) * np.percentile(volume[brain], 90)
        mask |= les
    return out.astype(np.float32), mask


def write_data(out: Path) -> None:
    import nibabel as nib
    from PIL import Image
    from skimage.data import lfw_subset

    faces = lfw_subset()
    (out / "faces").mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces[:180]):
        Image.fromarray((face * 255).round().astype(np.uint8)).resize((32, 32), Image.BICUBIC).save(
            out / "faces" / f"face_{i:03d}.png")
    (out / "heads").mkdir(exist_ok=True)
    for i in range(48):
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        nib.save(nib.Nifti1Image(normal_phantom(i), affine), out / "heads" / f"head_{i:02d}.nii.gz")


def train(out: Path, only: list[str] | None = None) -> None:
    common = ["experiment=smoke", "logger=none", "backbone.preset=tiny", "datamodule.num_workers=0",
              "trainer.val_check_interval=300", "sampling.every_n_steps=1000000", "checkpoint.every_n_steps=300"]
    runs = {
        "image": ["domain=image", f"datamodule.path={out / 'faces'}", "datamodule.channels=1",
                  "datamodule.resolution=32", "datamodule.batch_size=16"],
        "audio": ["domain=audio", "datamodule.sample_rate=16000", "datamodule.clip_seconds=0.125",
                  "datamodule.batch_size=8"],
        "mri": ["domain=mri", "datamodule.mode=slice", f"datamodule.path={out / 'heads'}", "datamodule.shape=[32,32]",
                "datamodule.spacing=[3.0,3.0,3.0]", "datamodule.batch_size=16", "datamodule.random_flip=false"],
    }
    for name, args in runs.items():
        if only and name not in only:
            continue
        t0 = time.time()
        cmd = [sys.executable, "-m", "src.train", *common, *args, f"trainer.max_steps={STEPS[name]}",
               f"paths.output_dir={out / ('run_' + name)}"]
        subprocess.run(cmd, cwd=ROOT, check=True)
        print(f"trained {name} in {time.time() - t0:.0f} s", flush=True)


def _job(prepare, prior, **kw):
    """A simulated restoration job (the clean file is damaged first and is the reference)."""
    return prepare(prior, simulate=True, **kw)


def eval_images(out: Path, steps: int) -> dict:
    from PIL import Image
    from skimage.data import lfw_subset

    from src.tools.restoration import Restorer
    from src.tools.restoration.image import prepare

    restorer = Restorer.from_checkpoint(out / "run_image/checkpoints/last.ckpt", device="cpu", steps=steps)
    faces = lfw_subset()[180:188]
    scores: dict[str, dict[str, list]] = {}
    for i, face in enumerate(faces):
        path = out / f"heldout_face_{i}.png"
        Image.fromarray((face * 255).round().astype(np.uint8)).resize((32, 32), Image.BICUBIC).save(path)
        for task, kw in (("inpaint", dict(mask_boxes=[[8, 10, 16, 12]])), ("super-resolution", dict(scale=4))):
            job = _job(prepare, restorer.prior, task=task, input=path, **kw)
            result = job.from_model(restorer.restore(job.problem, seed=i))
            for name, m in job.metrics(result, job.baseline()).items():
                for k, v in m.items():
                    scores.setdefault(task, {}).setdefault(f"{name}_{k}", []).append(v)
    return {t: {k: float(np.mean(v)) for k, v in s.items()} | {"images": len(faces)} for t, s in scores.items()}


def eval_audio(out: Path, steps: int) -> dict:
    import soundfile as sf

    from src.domains.audio.synth import render
    from src.tools.restoration import Restorer
    from src.tools.restoration.audio import prepare

    restorer = Restorer.from_checkpoint(out / "run_audio/checkpoints/last.ckpt", device="cpu", steps=steps)
    rows = []
    for i in range(8):
        clip, _ = render(50_000 + i, 16000, 16000)  # 1 s, indices the training set (< builtin_size) never uses
        path = out / f"heldout_clip_{i}.wav"
        sf.write(path, 0.9 * clip.T, 16000, subtype="FLOAT")
        job = _job(prepare, restorer.prior, task="denoise", input=path, noise_std=0.05, seed=i)
        result = job.from_model(restorer.restore(job.problem, seed=i))
        rows.append(job.metrics(result, job.baseline()))
    mean = {f"{name}_{k}": float(np.mean([r[name][k] for r in rows])) for name in rows[0] for k in rows[0][name]}
    mean["diffusion_si_sdr_improvement"] = mean["diffusion_si_sdr"] - mean["input_si_sdr"]
    mean["wiener_si_sdr_improvement"] = mean["wiener_si_sdr"] - mean["input_si_sdr"]
    return mean | {"clips": len(rows), "noise_std": 0.05, "clip_seconds": 1.0}


def eval_mri(out: Path, steps: int, ode_steps: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from src.tools.anomaly import Detector

    detector = Detector.from_checkpoint(out / "run_mri/checkpoints/last.ckpt", device="cpu", steps=steps,
                                        noise_level=0.3, draws=3, ode_steps=ode_steps)
    labels, scores, bpds, voxel_scores, voxel_labels = [], [], [], [], []
    for i in range(12):
        vol = normal_phantom(1000 + i)
        lesion = np.zeros(vol.shape, bool)
        if i % 2:
            vol, lesion = plant_lesions(vol, i)
        s = float(np.percentile(vol, 99.5))
        x = torch.from_numpy(np.moveaxis(np.clip(2 * vol / s - 1, -1, 1), 2, 0).copy())[:, None]
        amap = np.moveaxis(detector.map(x, seed=i).numpy(), 0, 2)
        fg = vol > 0.1 * s
        labels.append(i % 2)
        scores.append(float(amap[fg].mean()))
        bpds.append(detector.bits_per_dim(x, seed=i))
        if i % 2:
            voxel_scores.append(amap[fg])
            voxel_labels.append(lesion[fg])
    vs, vl = np.concatenate(voxel_scores), np.concatenate(voxel_labels)
    return {"volumes": len(labels), "lesioned": int(sum(labels)), "voxel_auroc": float(roc_auc_score(vl, vs)),
            "volume_auroc_score": float(roc_auc_score(labels, scores)),
            "volume_auroc_bits_per_dim": float(roc_auc_score(labels, bpds)),
            "bits_per_dim_normal": float(np.mean([b for b, l in zip(bpds, labels) if not l])),
            "bits_per_dim_lesioned": float(np.mean([b for b, l in zip(bpds, labels) if l])),
            "noise_level": 0.3, "draws": 3, "ode_steps": ode_steps}


def evaluate(out: Path, only: list[str] | None = None) -> None:
    torch.manual_seed(0)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = {"cpu": "2-core x86-64 (Intel Xeon), no GPU, shared with other jobs",
                          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for name, fn in (("mri", lambda: eval_mri(out, 50, 24)), ("images", lambda: eval_images(out, 50)),
                     ("audio", lambda: eval_audio(out, 50))):
        if only and name not in only:
            continue
        t0 = time.time()
        results[name] = fn()
        results[name]["eval_seconds"] = round(time.time() - t0, 1)
        results[name]["load_average_1min_after"] = round(__import__("os").getloadavg()[0], 1)
        print(name, json.dumps(results[name], indent=1), flush=True)
        path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    stage, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    if stage == "data":
        write_data(folder)
    else:
        {"train": train, "eval": evaluate}[stage](folder, sys.argv[3:])
