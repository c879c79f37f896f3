"""Image quality in a fixed CPU budget on real handwritten digits (docs/studies/image_quality.md).

    python -m benchmarks.image_quality data --root /tmp/iq                     # digits as PNG class folders
    python -m benchmarks.image_quality train --root /tmp/iq --name flow_lr1e-3 --minutes 10 --overrides diffusion=flow
    python -m benchmarks.image_quality eval --root /tmp/iq --name flow_lr1e-3 \
        --json docs/studies/data/image_quality.json
    python -m benchmarks.image_quality reference --root /tmp/iq --json docs/studies/data/image_quality.json

Data: scikit-learn's ``load_digits`` (1,797 real 8x8 digits) upsampled to 16x16 PNGs, one subfolder per
digit, with a fixed stratified split (300 held out, never trained on). Scorer: an MLP classifier and a PCA
fitted on the real train split only; a set of images is scored by the classifier's mean max-probability,
the entropy of its predicted-class histogram (ln 10 = 2.30 when every digit is equally common), the
accuracy on the requested label (class-conditional samples) and the Frechet distance to the held-out
digits in the PCA space. Training goes through ``python -m src.train`` with ``trainer.max_time``, sampling
through the project's Python API (``module_from_checkpoint(...).sample``), post-hoc EMA through
``python -m src.phema``. Everything runs on one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import linalg

from src.fileio import atomic_write_text

RES = 16
HELD_OUT = 300
N_SAMPLES = 300
PCA_DIMS = 16
SIGMA_RELS = (0.02, 0.05, 0.10, 0.15, 0.20)


# ---- data ----------------------------------------------------------------------------------------
def digit_images(res: int = RES) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, res, res), upsampled the way tests/data/test_labels_data.py does, and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((res, res)))
                     for im in d.images])
    return imgs, d.target.astype(int)


def split(labels: np.ndarray, held_out: int = HELD_OUT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified train / held-out indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=held_out, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def write_pngs(root: Path, res: int = RES) -> Path:
    """The train split as ``root/train/<digit>/dNNNN.png``; returns the folder to pass as datamodule.path."""
    from PIL import Image

    imgs, y = digit_images(res)
    tr, _ = split(y)
    folder = root / "train"
    for i in tr:
        (folder / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i]).save(folder / str(y[i]) / f"d{i:04d}.png")
    return folder


# ---- scorer --------------------------------------------------------------------------------------
class Scorer:
    """Classifier + PCA fitted on the real train split; scores (N, res*res) images in [0, 1]."""

    def __init__(self, res: int = RES, seed: int = 0):
        from sklearn.decomposition import PCA
        from sklearn.neural_network import MLPClassifier

        imgs, y = digit_images(res)
        tr, te = split(y)
        x = imgs.reshape(len(imgs), -1).astype(np.float64) / 255.0
        self.x_train, self.y_train, self.x_test, self.y_test = x[tr], y[tr], x[te], y[te]
        self.clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1.0, max_iter=500, random_state=seed)
        self.clf.fit(self.x_train, self.y_train)
        self.pca = PCA(n_components=PCA_DIMS, random_state=seed).fit(self.x_train)
        self.test_accuracy = float(self.clf.score(self.x_test, self.y_test))
        f = self.pca.transform(self.x_test)
        self.mu, self.cov = f.mean(0), np.cov(f, rowvar=False)

    def frechet(self, x: np.ndarray) -> float:
        f = self.pca.transform(x)
        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov)

    def score(self, x: np.ndarray, labels: np.ndarray | None = None) -> dict:
        p = self.clf.predict_proba(x)
        out = {"n": int(len(x)), "max_prob": float(p.max(1).mean()),
               "class_entropy": class_entropy(p.argmax(1)), "frechet_pca": self.frechet(x)}
        if labels is not None:
            out["label_accuracy"] = float((p.argmax(1) == labels).mean())
        return out


def class_entropy(pred: np.ndarray, num_classes: int = 10) -> float:
    """Entropy (nats) of the predicted-class histogram: ln 10 = 2.30 when every class is equally common."""
    h = np.bincount(pred, minlength=num_classes) / len(pred)
    h = h[h > 0]
    return float(-(h * np.log(h)).sum()) + 0.0


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^1/2) (the FID formula, here on PCA features)."""
    covmean = linalg.sqrtm(cov1 @ cov2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1 + cov2 - 2 * covmean))


def reference_rows(scorer: Scorer, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = len(scorer.x_test)
    # the real row's Frechet distance: 300 train digits against the held-out ones (against itself it is 0)
    real = scorer.score(scorer.x_test)
    real["frechet_pca"] = scorer.frechet(scorer.x_train[rng.choice(len(scorer.x_train), n, replace=False)])
    # how much the scores move between two draws of 300 real digits: the resolution of a 300-sample score
    draws = [scorer.score(scorer.x_train[np.random.default_rng(k + 10).choice(len(scorer.x_train), n,
                                                                             replace=False)]) for k in range(5)]
    spread = {key: [min(d[key] for d in draws), max(d[key] for d in draws)]
              for key in ("max_prob", "class_entropy", "frechet_pca")}
    return {"held_out_real": real, "real_train_draws_range": spread,
            "held_out_real_labels": scorer.score(scorer.x_test, scorer.y_test)["label_accuracy"],
            "uniform_noise": scorer.score(rng.uniform(0, 1, (n, scorer.x_test.shape[1]))),
            "classifier_test_accuracy": scorer.test_accuracy}


# ---- runs ----------------------------------------------------------------------------------------
def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train(root: Path, name: str, minutes: float, overrides: list[str]) -> dict:
    run = root / "runs" / name
    cmd = [sys.executable, "-m", "src.train", "experiment=quickstart", "domain=image",
           f"datamodule.path={root / 'train'}", f"datamodule.resolution={RES}", "datamodule.channels=1",
           "datamodule.random_flip=false", "datamodule.num_workers=0", "logger=none", "threads=1",
           "trainer.max_steps=-1", f"trainer.max_time={{minutes:{minutes}}}",
           "sampling.every_n_steps=1000000", "checkpoint.every_n_steps=500",
           "ema.phema={std:[0.05,0.10],snapshot_every:100}",
           f"paths.output_dir={run}", *overrides]
    info = {"name": name, "overrides": overrides, "minutes": minutes, "uptime_before": uptime(),
            "command": " ".join(cmd[1:])}
    print(info["command"], flush=True)
    t0 = time.time()
    subprocess.run(cmd, env=one_thread_env(), check=True)
    info["wall_s"] = round(time.time() - t0, 1)
    info["uptime_after"] = uptime()
    import torch

    info["steps"] = int(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                                   weights_only=True)["global_step"])
    atomic_write_text(run / "bench_train.json", json.dumps(info, indent=2))
    return info


def to_flat(x) -> np.ndarray:
    """(N, 1, H, W) samples in [-1, 1] -> (N, H*W) in [0, 1], quantised as the PNG writer does."""
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    return u8.reshape(len(u8), -1).numpy().astype(np.float64) / 255.0


def evaluate(root: Path, name: str, scorer: Scorer, grid: list[tuple], n: int = N_SAMPLES, seed: int = 1,
             step: int | None = None) -> list[dict]:
    """Score each (weights, sampler, steps, guidance) of ``grid``; weights is ema | raw | phema-S.SSS (post-hoc
    EMA width), guidance None draws unconditionally, a number draws n // 10 of every digit at that weight;
    ``step``: post-hoc EMA as of that training step (a shorter run's weights, to compare runs at equal steps)."""
    import torch

    from src.latent.stage import module_from_checkpoint

    torch.set_num_threads(1)
    run = root / "runs" / name
    phema_dir = run / ("phema" if step is None else f"phema-at-{step}")
    if not phema_dir.is_dir():
        subprocess.run([sys.executable, "-m", "src.phema", str(run), "--sigma-rel",
                        ",".join(f"{s}" for s in SIGMA_RELS), "--out", str(phema_dir),
                        *([] if step is None else ["--step", str(step)])], env=one_thread_env(), check=True)
    modules = {}
    rows = []
    for weights, sampler, steps, w in grid:
        ckpt = run / "checkpoints" / "last.ckpt" if weights in ("ema", "raw") else phema_dir / f"{weights}.ckpt"
        if ckpt not in modules:
            modules[ckpt] = module_from_checkpoint(ckpt)[0]
        m = modules[ckpt]
        t0 = time.time()
        kw = dict(sampler=sampler, steps=steps, seed=seed, use_ema=weights != "raw", batch_size=100)
        if w is None:
            s = scorer.score(to_flat(m.sample(n, **kw)))
        else:
            labels = np.arange(n) % 10
            s = scorer.score(to_flat(m.sample(n, label=torch.as_tensor(labels), guidance=w, **kw)), labels)
        row = {"run": name if step is None else f"{name}@{step}", "weights": weights, "sampler": sampler,
               "steps": steps, "guidance": w,
               **s, "sample_s": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def save_grid(root: Path, name: str, weights: str, sampler: str, steps: int, path: Path,
              guidance: float | None = None) -> None:
    """A small PNG: 10 x 10 samples (one row per digit for a class-conditional run)."""
    import torch

    from src.latent.stage import module_from_checkpoint
    from src.media import image_grid

    run = root / "runs" / name
    ckpt = run / "checkpoints" / "last.ckpt" if weights in ("ema", "raw") else run / "phema" / f"{weights}.ckpt"
    m = module_from_checkpoint(ckpt)[0]
    kw = {}
    if guidance is not None:
        kw = {"label": torch.arange(100) // 10, "guidance": guidance}
    x = m.sample(100, sampler=sampler, steps=steps, seed=2, use_ema=weights != "raw", **kw)
    from PIL import Image

    arr = image_grid(x, nrow=10)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(path)


def update_json(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    if isinstance(value, list):
        data.setdefault(key, [])
        ident = ("run", "weights", "sampler", "steps", "guidance")
        new = {tuple(v[k] for k in ident) for v in value}
        data[key] = [r for r in data[key] if tuple(r[k] for k in ident) not in new] + value
    else:
        data[key] = value
    atomic_write_text(path, json.dumps(data, indent=1))


# first the EMA lengths at one sampler, then the samplers at the best EMA (sampling is cheap next to training)
EMA_CHOICES = ["ema", "raw"] + [f"phema-{s:.3f}" for s in SIGMA_RELS]
SAMPLERS = [("dpmpp_2m", 8), ("dpmpp_2m", 16), ("dpmpp_2m", 32), ("euler", 32), ("heun", 16), ("dpmpp_2m_sde", 16),
            ("dpmpp_2m_sde", 32), ("euler_a", 32)]


def markdown_table(data: dict) -> str:
    """The scores of ``data`` (the --json file) as a markdown table, reference rows first."""
    ref = data["reference"]
    lines = ["| run | weights | sampler | steps | guidance | max-prob | class entropy | label acc. | Frechet (PCA) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    r, nz = ref["held_out_real"], ref["uniform_noise"]
    lines.append(f"| held-out real digits | | | | | {r['max_prob']:.3f} | {r['class_entropy']:.3f} | "
                 f"{ref['held_out_real_labels']:.3f} | {r['frechet_pca']:.3f} |")
    lines.append(f"| uniform noise | | | | | {nz['max_prob']:.3f} | {nz['class_entropy']:.3f} | | "
                 f"{nz['frechet_pca']:.3f} |")
    for row in data.get("scores", []):
        acc = f"{row['label_accuracy']:.3f}" if "label_accuracy" in row else ""
        g = "" if row["guidance"] is None else f"{row['guidance']:g}"
        lines.append(f"| {row['run']} | {row['weights']} | {row['sampler']} | {row['steps']} | {g} | "
                     f"{row['max_prob']:.3f} | {row['class_entropy']:.3f} | {acc} | {row['frechet_pca']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.image_quality", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["data", "train", "eval", "reference", "grid", "table"],
                    help="step of the search: write the digit PNGs, train one setting, score its samples, score the "
                         "reference rows, draw a sample grid, or print the table")
    ap.add_argument("--root", type=Path, required=True, help="working folder (digit PNGs, runs, samples)")
    ap.add_argument("--name", help="train / eval / grid: the run's name (a folder under ROOT/runs)")
    ap.add_argument("--minutes", type=float, default=10.0, help="train: wall-clock budget (trainer.max_time)")
    ap.add_argument("--json", type=Path, help="results file to add this step's numbers to (optional)")
    ap.add_argument("--weights", default=None, help="eval: only these weights (comma list) for the sampler sweep")
    ap.add_argument("--guidance", default="none", help="eval: none (unconditional run) or weights, e.g. 1,2,3")
    ap.add_argument("--samplers", default=None, help="eval: only these sampler:steps pairs, comma-separated")
    ap.add_argument("--step", type=int, default=None, help="eval --samplers: post-hoc EMA as of this step")
    ap.add_argument("--sampler", default="dpmpp_2m", help="eval --guidance and grid: the sampler")
    ap.add_argument("--steps", type=int, default=32, help="eval --guidance and grid: sampler steps")
    ap.add_argument("--out", type=Path, help="grid: the PNG to write")
    ap.add_argument("--overrides", nargs="*", default=[],
                    help="train: Hydra overrides for src.train (last on the line), e.g. diffusion=edm")
    a = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    if a.what == "data":
        print(write_pngs(a.root))
    elif a.what == "train":
        info = train(a.root, a.name, a.minutes, a.overrides)
        print(json.dumps(info, indent=1))
        if a.json:
            data = json.loads(a.json.read_text()) if a.json.exists() else {}
            data.setdefault("runs", {})[a.name] = info
            atomic_write_text(a.json, json.dumps(data, indent=1))
    elif a.what == "reference":
        s = Scorer()
        ref = reference_rows(s)
        print(json.dumps(ref, indent=1))
        if a.json:
            update_json(a.json, "reference", ref)
    elif a.what == "eval":
        s = Scorer()
        if a.samplers:  # only these samplers, e.g. dpmpp_2m_sde:16,euler_a:32, at --weights
            pairs = [(p.split(":")[0], int(p.split(":")[1])) for p in a.samplers.split(",")]
            ws = [None] if a.guidance == "none" else [float(g) for g in a.guidance.split(",")]
            rows = evaluate(a.root, a.name, s, [(a.weights or "ema", smp, k, w) for smp, k in pairs for w in ws],
                            step=a.step)
        elif a.guidance == "none":  # unconditional run: EMA lengths, then samplers at the best one
            rows = evaluate(a.root, a.name, s, [(e, "dpmpp_2m", 16, None) for e in EMA_CHOICES])
            best = a.weights or min(rows, key=lambda r: r["frechet_pca"])["weights"]
            rest = [(best, smp, k, None) for smp, k in SAMPLERS if (smp, k) != ("dpmpp_2m", 16)]
            rows += evaluate(a.root, a.name, s, rest)
        else:  # class-conditional run: unconditional and each guidance weight, at the given EMA and sampler
            ws = [None] + [float(g) for g in a.guidance.split(",")]
            emas = (a.weights or "ema").split(",")
            rows = evaluate(a.root, a.name, s, [(e, a.sampler, a.steps, w) for e in emas for w in ws])
        if a.json:
            update_json(a.json, "scores", rows)
    elif a.what == "table":
        print(markdown_table(json.loads(a.json.read_text())))
    elif a.what == "grid":
        save_grid(a.root, a.name, a.weights or "ema", a.sampler, a.steps, a.out,
                  None if a.guidance == "none" else float(a.guidance))


if __name__ == "__main__":
    main()
