"""Transfer study: does starting from a pretrained model help a small data set in a small CPU budget?

    python -m benchmarks.transfer_study --pair emoji --pretrain-minutes 15 --minutes 2,5,10 \
        --lora attention:4,attention:16,attention+conv:1 --json docs/studies/data/transfer_emoji.json
    python -m benchmarks.transfer_study --pair emoji --preset compact --pretrain-minutes 30 --minutes 2,5,10 \
        --lora attention+conv:2,attention+conv:4 --json docs/studies/data/transfer_emoji_compact.json

Two pairs of real sets (never downloaded):
- ``--pair emoji`` (32x32 colour, Debian packages, see benchmarks/icon_data.py): set A, the pretraining set, is
  every 32x32 desktop icon of the installed icon themes plus the emoji of four Unicode groups (People & Body,
  Objects, Symbols, Activities); set B is the emoji of five other groups (Smileys & Emotion, Animals & Nature,
  Food & Drink, Travel & Places, Flags).
- ``--pair digits`` (16x16 grey, scikit-learn): A is digits 0-4, B digits 5-9.
In both, 250 items of B (50 per class) are the small fine-tuning set; the rest of B is split in two: one half
trains the scorer, the other is the reference the Frechet distance compares with. Scorer: an MLP classifier of
B's five classes on the pixels; a set of images is scored by the Frechet distance between its hidden-layer
features and the reference's, the mean max-probability and the entropy of the predicted-class histogram
(ln 5 = 1.61 when B's classes are equally common).

Runs (one process, one thread, CPU time by ``time.process_time`` without the scoring; each run is trained in
slices so all runs reach a mark before any goes further): pretrain on A from scratch,
save it as a checkpoint of this framework; then on B for the same CPU minutes: from scratch, full fine-tuning
from the A checkpoint (``init.from``), and LoRA (``finetune.lora``: ``--lora TARGETS:RANK,...``, targets joined
by ``+``). Every run is the UNet of ``--preset`` (tiny: the quickstart preset) with flow matching, scored at each
of ``--minutes``.
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
DIFFUSION = {"family": "flow", "time_density": "logit_normal", "sigma_max": 80.0, "sampler": "dpmpp_2m_sde",
             "steps": 32}
LR, BATCH, WARMUP = 1e-3, 32, 50
EMOJI_A = ("People & Body", "Objects", "Symbols", "Activities")
EMOJI_B = ("Smileys & Emotion", "Animals & Nature", "Food & Drink", "Travel & Places", "Flags")


# ---- data and scorer ---------------------------------------------------------------------------------------
def _split_b(y: np.ndarray, b_classes, rng) -> tuple[list, list, list]:
    b_train, b_clf, b_ref = [], [], []
    for c in b_classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        b_train += list(idx[:B_TRAIN_PER_CLASS])
        rest = idx[B_TRAIN_PER_CLASS:]
        b_clf += list(rest[: len(rest) // 2])
        b_ref += list(rest[len(rest) // 2:])
    return b_train, b_clf, b_ref


def sets(pair: str = "digits", seed: int = 0, cache: Path = Path("/tmp/transfer_study")) -> dict:
    """x (N, C, H, W) in [0, 1], labels y (B's classes 0-4, A's -1), and the index sets a / b_train / b_clf / b_ref."""
    rng = np.random.default_rng(seed)
    if pair == "digits":
        imgs, y = digit_images()
        x = imgs.astype(np.float32)[:, None] / 255.0
        b_train, b_clf, b_ref = _split_b(y, range(5, 10), rng)
        y = np.where(y >= 5, y - 5, -1)
        a = np.flatnonzero(y < 0)
    elif pair == "emoji":
        from benchmarks import icon_data

        ex, ey, names = icon_data.load("emoji", cache)
        ix, _, _ = icon_data.load("icons", cache)
        b_ids = [names.index(g) for g in EMOJI_B]
        a_ids = [names.index(g) for g in EMOJI_A]
        y = np.array([b_ids.index(v) if v in b_ids else (-1 if v in a_ids else -2) for v in ey])
        keep = y > -2
        x = np.concatenate([ex[keep], ix]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        y = np.concatenate([y[keep], np.full(len(ix), -1)])
        b_train, b_clf, b_ref = _split_b(y, range(5), rng)
        a = np.flatnonzero(y < 0)
    else:
        raise SystemExit(f"--pair {pair}: choose digits or emoji")
    return {"x": x, "y": y, "a": a, "b_train": np.array(b_train), "b_clf": np.array(b_clf),
            "b_ref": np.array(b_ref), "pair": pair}


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
        x = x.reshape(len(x), -1).astype(np.float64)
        f, p = self.features(x), self.clf.predict_proba(x)
        return {"frechet": frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.cov),
                "max_prob": float(p.max(1).mean()), "class_entropy": class_entropy(p.argmax(1), 5)}


# ---- training ----------------------------------------------------------------------------------------------
def backbone_for(shape: tuple, preset: str = "tiny") -> dict:
    return {"name": "unet", "spatial_dims": 2, "in_channels": int(shape[0]), "preset": preset}


def build(shape: tuple, init: dict | None = None, lora: tuple[list, int] | None = None,
          preset: str = "tiny") -> DiffusionModule:
    torch.manual_seed(0)
    finetune = {"lora": {"rank": lora[1], "targets": list(lora[0])}} if lora else None
    return DiffusionModule(backbone=backbone_for(shape, preset), diffusion=dict(DIFFUSION), data_shape=list(shape),
                           ema={"decay": 0.999}, init=init, finetune=finetune)


def sample_score(module: DiffusionModule, scorer: Scorer, seed: int = 1) -> dict:
    t0 = time.process_time()
    x = module.sample(N_SAMPLES, seed=seed, batch_size=100)
    out = scorer.score(((x.clamp(-1, 1) + 1) / 2).numpy())
    out["score_cpu_s"] = round(time.process_time() - t0, 1)
    return out


class Arm:
    """One run: AdamW on the trainable weights with linear warm-up, trained in CPU-time slices so every run
    reaches each mark before any run goes further (a stopped study keeps complete rows)."""

    def __init__(self, module: DiffusionModule, x: np.ndarray, seed: int = 0):
        self.module = module
        self.opt = torch.optim.AdamW([p for p in module.backbone.parameters() if p.requires_grad], lr=LR)
        self.data = torch.from_numpy(x * 2 - 1)
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
        self.loss = float(loss.detach()) if self.step else self.loss

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


def lora_arms(spec: str) -> dict[str, tuple[list, int]]:
    """``attention:4,attention+conv:1`` -> {"LoRA attention r=4": (["attention"], 4), ...}."""
    arms = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        targets, _, rank = item.rpartition(":")
        if not targets or not rank.isdigit():
            raise SystemExit(f"--lora {item}: write TARGETS:RANK, e.g. attention:4 or attention+conv:1")
        arms[f"LoRA {targets} r={rank}"] = (targets.split("+"), int(rank))
    return arms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="emoji", choices=["emoji", "digits"], help="which pair of real sets A -> B")
    p.add_argument("--pretrain-minutes", type=float, default=15.0, help="CPU-minutes of pretraining on set A")
    p.add_argument("--minutes", default="2,5,10", help="CPU-minute marks at which each run on B is scored")
    p.add_argument("--lora", default="attention:4,attention:16",
                   help="LoRA runs as TARGETS:RANK, comma-separated; targets joined by + (attention, conv, regex)")
    p.add_argument("--work", default="/tmp/transfer_study", help="folder for the data cache and the pretrained "
                   "checkpoint (reused when the study runs again)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "compact", "small"],
                   help="UNet preset of every run (tiny: 164k parameters, small: 4.4M)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    marks = [float(m) for m in args.minutes.split(",")]
    loras = lora_arms(args.lora)
    work = Path(args.work)
    t_all = time.process_time()
    data = sets(args.pair, cache=work)
    x = data["x"]
    shape = tuple(x.shape[1:])
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
            "uptime_before": uptime(), "torch": torch.__version__, "threads": 1, "pair": args.pair,
            "sizes": {"a": len(data["a"]), "b_train": len(data["b_train"]), "b_scorer": len(data["b_clf"]),
                      "b_reference": len(data["b_ref"])},
            "settings": {"backbone": backbone_for(shape, args.preset), "diffusion": DIFFUSION, "lr": LR,
                         "batch": BATCH,
                         "samples": N_SAMPLES, "lora": {k: {"targets": t, "rank": r} for k, (t, r) in loras.items()}}}
    scorer = Scorer(data)
    info["reference"] = {"real B (train split)": scorer.score(x[data["b_train"]]),
                         "real A": scorer.score(x[data["a"]][np.random.default_rng(0).permutation(len(data["a"]))
                                                             [:N_SAMPLES]])}
    info["scorer_accuracy_on_reference"] = scorer.ref_accuracy
    print(json.dumps({"sizes": info["sizes"], "scorer_accuracy": scorer.ref_accuracy}), flush=True)
    # pretraining on A, saved as a checkpoint of this framework (reused when the study is run again)
    work.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.preset == "tiny" else f"_{args.preset}"
    ckpt = work / f"pretrained_A_{args.pair}{suffix}.ckpt"
    base = build(shape, preset=args.preset)
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
    save(info, args.json, t_all)
    backbone = backbone_for(shape, args.preset)
    init = check_init({"from": str(ckpt)})
    source = describe(ckpt, dict(backbone))
    init.update(kind=source["kind"], file=source["file"], sha256=file_sha256(ckpt),
                mapping=check_objective(init, source, DIFFUSION))
    starts = {"scratch": (None, None), "full fine-tune": (init, None)}
    starts.update({name: (init, lora) for name, lora in loras.items()})
    arms = {name: Arm(build(shape, start, lora, args.preset), x[data["b_train"]])
            for name, (start, lora) in starts.items()}
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
