"""Transfer study: does starting from a pretrained model help a small data set in a small CPU budget?

    python -m benchmarks.transfer_study --pretrain-minutes 3 --minutes 1,2 --json docs/studies/data/transfer.json

Data (real, from scikit-learn, never downloaded): the 1,797 handwritten digits at 16x16 (as in
benchmarks/image_quality.py). Set A: digits 0-4 (all of them), the pretraining set. Set B: digits 5-9; 250 of them
(50 per class) are the small fine-tuning set, the rest of B is split in two: one half trains the scorer, the other
is the reference the Frechet distance compares with. Scorer: an MLP classifier of B's five classes; a set of images
is scored by the Frechet distance between its hidden-layer features and the reference's, the mean max-probability
and the entropy of the predicted-class histogram (ln 5 = 1.61 when B's classes are equally common).

Runs (one process, one thread, CPU time by ``time.process_time`` without the scoring; each run is trained in
slices so all runs reach a mark before any goes further): pretrain on A from scratch,
save it as a checkpoint of this framework; then on B for the same CPU minutes: from scratch, full fine-tuning
from the A checkpoint (``init.from``), and LoRA (``finetune.lora.rank`` 4 and 16, attention layers). Every run
is the tiny UNet with flow matching (the quickstart preset), scored at each of ``--minutes``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.image_quality import class_entropy, digit_images, frechet_distance
from src.backbones.pretrained import check_init, check_objective, describe, file_sha256
from src.fileio import atomic_write_text
from src.module import DiffusionModule

B_TRAIN_PER_CLASS = 50
N_SAMPLES = 300
BACKBONE = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "preset": "tiny"}
DIFFUSION = {"family": "flow", "time_density": "logit_normal", "sigma_max": 80.0, "sampler": "dpmpp_2m_sde",
             "steps": 32}
LR, BATCH, WARMUP = 1e-3, 32, 50


# ---- data and scorer ---------------------------------------------------------------------------------------
def sets(seed: int = 0) -> dict:
    imgs, y = digit_images()
    x = imgs.astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    a = np.flatnonzero(y < 5)
    b_train, b_clf, b_ref = [], [], []
    for c in range(5, 10):
        idx = rng.permutation(np.flatnonzero(y == c))
        b_train += list(idx[:B_TRAIN_PER_CLASS])
        rest = idx[B_TRAIN_PER_CLASS:]
        b_clf += list(rest[: len(rest) // 2])
        b_ref += list(rest[len(rest) // 2:])
    return {"x": x, "y": y, "a": a, "b_train": np.array(b_train), "b_clf": np.array(b_clf),
            "b_ref": np.array(b_ref)}


class Scorer:
    """MLP classifier of B's classes; Frechet distance on its hidden features against B's reference split."""

    def __init__(self, data: dict, seed: int = 0):
        from sklearn.neural_network import MLPClassifier

        x = data["x"].reshape(len(data["x"]), -1)
        self.clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1.0, max_iter=500, random_state=seed)
        self.clf.fit(x[data["b_clf"]], data["y"][data["b_clf"]])
        self.ref_accuracy = float(self.clf.score(x[data["b_ref"]], data["y"][data["b_ref"]]))
        f = self.features(x[data["b_ref"]])
        self.mu, self.cov = f.mean(0), np.cov(f, rowvar=False)

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0.0)

    def score(self, x: np.ndarray) -> dict:
        f, p = self.features(x), self.clf.predict_proba(x)
        return {"frechet": frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov),
                "max_prob": float(p.max(1).mean()), "class_entropy": class_entropy(p.argmax(1), 10)}


# ---- training ----------------------------------------------------------------------------------------------
def build(init: dict | None = None, lora_rank: int = 0) -> DiffusionModule:
    torch.manual_seed(0)
    finetune = {"lora": {"rank": lora_rank, "targets": ["attention"]}} if lora_rank else None
    return DiffusionModule(backbone=dict(BACKBONE), diffusion=dict(DIFFUSION), data_shape=[1, 16, 16],
                           ema={"decay": 0.999}, init=init, finetune=finetune)


def sample_score(module: DiffusionModule, scorer: Scorer, seed: int = 1) -> dict:
    t0 = time.process_time()
    x = module.sample(N_SAMPLES, seed=seed, batch_size=100)
    x = ((x.clamp(-1, 1) + 1) / 2).reshape(len(x), -1).numpy().astype(np.float64)
    out = scorer.score(x)
    out["score_cpu_s"] = round(time.process_time() - t0, 1)
    return out


class Arm:
    """One run: AdamW on the trainable weights with linear warm-up, trained in CPU-time slices so every run
    reaches each mark before any run goes further (a stopped study keeps complete rows)."""

    def __init__(self, module: DiffusionModule, x: np.ndarray, seed: int = 0):
        self.module = module
        self.opt = torch.optim.AdamW([p for p in module.backbone.parameters() if p.requires_grad], lr=LR)
        self.data = torch.from_numpy(x * 2 - 1).unsqueeze(1)
        self.g = torch.Generator().manual_seed(seed)
        self.step, self.used, self.loss = 0, 0.0, float("nan")

    def train_until(self, minutes: float) -> None:
        t0 = time.process_time() - self.used
        while self.used < minutes * 60:
            xb = self.data[torch.randint(len(self.data), (BATCH,), generator=self.g)]
            u, noise = torch.rand(BATCH, generator=self.g), torch.randn(xb.shape, generator=self.g)
            for group in self.opt.param_groups:
                group["lr"] = LR * min(1.0, (self.step + 1) / WARMUP)
            loss = self.module.objective.loss(self.module.backbone, xb, u, noise).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.module.ema.update(self.module.backbone)
            self.step += 1
            self.used = time.process_time() - t0
        self.loss = float(loss) if self.step else self.loss

    def row(self, minutes: float, scorer: Scorer | None) -> dict:
        row = {"minutes": minutes, "steps": self.step, "loss": round(self.loss, 4)}
        if scorer is not None:
            row.update(sample_score(self.module, scorer))  # scoring is outside the training clock
        print(json.dumps(row), flush=True)
        return row


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def table(result: dict) -> str:
    lines = ["| run | CPU min | steps | trainable params | Frechet (B features) | max-prob | class entropy |",
             "|---|---|---|---|---|---|---|"]
    for name, run in result["runs"].items():
        for r in run["rows"]:
            lines.append(f"| {name} | {r['minutes']:g} | {r['steps']} | {run['trainable']:,} | {r['frechet']:.2f} | "
                         f"{r['max_prob']:.3f} | {r['class_entropy']:.3f} |")
    for name, r in result["reference"].items():
        lines.append(f"| {name} | - | - | - | {r['frechet']:.2f} | {r['max_prob']:.3f} | {r['class_entropy']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain-minutes", type=float, default=3.0, help="CPU-minutes of pretraining on set A")
    p.add_argument("--minutes", default="1,2", help="CPU-minute marks at which each run on B is scored")
    p.add_argument("--ranks", default="4,16", help="LoRA ranks to fine-tune with, comma-separated")
    p.add_argument("--work", default="/tmp/transfer_study", help="folder for the pretrained checkpoint")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    marks = [float(m) for m in args.minutes.split(",")]
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
            "uptime_before": uptime(), "torch": torch.__version__, "threads": 1,
            "settings": {"backbone": BACKBONE, "diffusion": DIFFUSION, "lr": LR, "batch": BATCH,
                         "b_train": 5 * B_TRAIN_PER_CLASS, "samples": N_SAMPLES, "lora_targets": ["attention"]}}
    t_all = time.process_time()
    data = sets()
    scorer = Scorer(data)
    x = data["x"]
    info["reference"] = {"real B (train split)": scorer.score(x[data["b_train"]].reshape(-1, 256).astype(np.float64)),
                         "real A (digits 0-4)": scorer.score(x[data["a"]][:N_SAMPLES].reshape(-1, 256)
                                                             .astype(np.float64))}
    info["scorer_accuracy_on_reference"] = scorer.ref_accuracy
    # pretraining on A, saved as a checkpoint of this framework (reused when the study is run again)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "pretrained_A.ckpt"
    base = build()
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        base.load_state_dict(saved["state_dict"])
        info["pretrain"] = saved.get("pretrain") or {"minutes": args.pretrain_minutes, "steps": saved["global_step"]}
    else:
        arm = Arm(base, x[data["a"]])
        arm.train_until(args.pretrain_minutes)
        info["pretrain"] = arm.row(args.pretrain_minutes, None)
        torch.save({"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams),
                    "global_step": arm.step, "pretrain": info["pretrain"]}, ckpt)
    info["reference"]["pretrained on A, not fine-tuned"] = sample_score(base, scorer)
    init = check_init({"from": str(ckpt)})
    source = describe(ckpt, dict(BACKBONE))
    init.update(kind=source["kind"], file=source["file"], sha256=file_sha256(ckpt),
                mapping=check_objective(init, source, DIFFUSION))
    starts = {"scratch": (None, 0), "full fine-tune": (init, 0)}
    starts.update({f"LoRA r={r}": (init, int(r)) for r in args.ranks.split(",")})
    arms = {name: Arm(build(start, rank), x[data["b_train"]]) for name, (start, rank) in starts.items()}
    info["runs"] = {name: {"trainable": sum(p.numel() for p in arm.module.backbone.parameters() if p.requires_grad),
                           "rows": []} for name, arm in arms.items()}
    for mark in marks:
        for name, arm in arms.items():
            print(f"-- {name} to {mark:g} CPU-minutes", flush=True)
            arm.train_until(mark)
            info["runs"][name]["rows"].append(arm.row(mark, scorer))
            save(info, args.json, t_all)  # after every row: a stopped study keeps what it measured
    print(table(info))
    print(f"total CPU minutes: {info['total_cpu_minutes']}  ({info['cpu']}; {info['uptime_after']})")


def save(info: dict, path: str | None, t_all: float) -> None:
    info["total_cpu_minutes"] = round((time.process_time() - t_all) / 60, 2)
    info["uptime_after"] = uptime()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
