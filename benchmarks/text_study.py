"""Text conditioning on real handwritten digits with a compositional hold-out (docs/studies/text_conditioning.md).

    python -m benchmarks.text_study --root /tmp/ts --steps 1500 --json docs/studies/data/text_conditioning.json

Data: scikit-learn's ``load_digits`` (real 8x8 digits) upsampled to 16x16 and drawn in one of three colours
(red, green, blue) on black; each training image has a sidecar caption such as ``a red seven``. The split of
``benchmarks.image_quality`` holds out 300 digits; of the 30 (digit, colour) pairs, the 10 with
``colour == digit % 3`` never occur in training (every digit and every colour still does), so prompts such as
``a red zero`` test composition. Training goes through ``python -m src.train ... cond=text`` (the built-in byte
encoder), sampling through ``src.sample``'s Python path (``module.sample(text=...)``).

Scoring: the digit scorer of ``benchmarks.image_quality`` (an MLP fitted on the real training digits) reads the
digit from the brightest channel; the colour is the channel with the largest mean over the stroke pixels. A
sample is right when both match its prompt. The same scorer on the 300 held-out real digits, drawn in the colour
of each prompt, gives the real items' accuracy; the target is samples at >= 80 % of it, on seen and held-out
pairs alike. All work runs on one thread; CPU time is measured with ``resource.getrusage``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.image_quality import Scorer, digit_images, one_thread_env, split, uptime
from src.domains.common import image_grid
from src.fileio import atomic_write_text
from src.latent.stage import module_from_checkpoint

RES = 16
COLOURS = ("red", "green", "blue")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def held_out_pair(digit: int, colour: int) -> bool:
    """The compositional hold-out: (digit, colour) pairs never seen in training."""
    return colour == digit % 3


def caption(digit: int, colour: int) -> str:
    return f"a {COLOURS[colour]} {WORDS[digit]}"


def coloured(gray: np.ndarray, colour: int) -> np.ndarray:
    """(H, W) uint8 grey digit -> (H, W, 3) uint8 with the strokes in one channel."""
    out = np.zeros((*gray.shape, 3), dtype=np.uint8)
    out[..., colour] = gray
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_data(root: Path) -> tuple[Path, int]:
    """The training split, each digit in one of its two allowed colours, with a sidecar caption."""
    imgs, y = digit_images(RES)
    tr, _ = split(y)
    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in tr:
        allowed = [c for c in range(3) if not held_out_pair(int(y[i]), c)]
        c = int(rng.choice(allowed))
        Image.fromarray(coloured(imgs[i], c)).save(folder / f"d{i:04d}.png")
        (folder / f"d{i:04d}.txt").write_text(caption(int(y[i]), c) + "\n")
    return folder, len(tr)


def read_rgb(x) -> np.ndarray:
    """(N, 3, H, W) samples in [-1, 1] -> (N, H, W, 3) in [0, 1], quantised as the PNG writer does."""
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().byte()
    return u8.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0


def judge(scorer: Scorer, rgb: np.ndarray, digits: np.ndarray, colours: np.ndarray) -> dict:
    """Digit (scorer on the brightest channel), colour (the strongest channel over the strokes), both."""
    gray = rgb.max(-1)
    pred_digit = scorer.clf.predict(gray.reshape(len(gray), -1))
    stroke = gray > 0.5
    means = np.stack([(rgb[..., k] * stroke).sum((1, 2)) / np.maximum(stroke.sum((1, 2)), 1) for k in range(3)], 1)
    pred_colour = np.where(stroke.any((1, 2)), means.argmax(1), -1)
    d_ok, c_ok = pred_digit == digits, pred_colour == colours
    return {"n": int(len(rgb)), "digit": float(d_ok.mean()), "colour": float(c_ok.mean()),
            "both": float((d_ok & c_ok).mean())}


def prompts(which: str) -> list[tuple[int, int]]:
    return [(d, c) for d in range(10) for c in range(3) if held_out_pair(d, c) == (which == "held_out")]


def real_reference(scorer: Scorer) -> dict:
    """The held-out real digits drawn in the colour of each prompt, through the same judge."""
    imgs, y = digit_images(RES)
    _, te = split(y)
    out = {}
    for which in ("seen", "held_out"):
        rgb, digits, colours = [], [], []
        for d, c in prompts(which):
            for i in te[y[te] == d]:
                rgb.append(coloured(imgs[i], c).astype(np.float64) / 255.0)
                digits.append(d)
                colours.append(c)
        out[which] = judge(scorer, np.stack(rgb), np.array(digits), np.array(colours))
    return out


def train(root: Path, data: Path, steps: int, overrides: list[str]) -> dict:
    run = root / "run"
    cmd = [sys.executable, "-m", "src.train", "experiment=quickstart", "domain=image", "cond=text",
           f"datamodule.path={data}", f"datamodule.resolution={RES}", "datamodule.channels=3",
           "datamodule.random_flip=false", "datamodule.num_workers=0", "logger=none", "threads=1",
           f"trainer.max_steps={steps}", "optim.lr=2e-3", "sampling.every_n_steps=1000000",
           "checkpoint.every_n_steps=500", "trainer.enable_progress_bar=false", f"paths.output_dir={run}",
           "cond.dim=64", "cond.max_length=32", *overrides]
    print(" ".join(cmd[1:]), flush=True)
    before, t0 = cpu_seconds(), time.time()
    subprocess.run(cmd, env=one_thread_env(), check=True, stdout=subprocess.DEVNULL)
    return {"command": "python " + " ".join(cmd[1:]), "steps": steps, "cpu_s": round(cpu_seconds() - before, 1),
            "wall_s": round(time.time() - t0, 1)}


def evaluate(root: Path, scorer: Scorer, per_prompt: int, guidances: list[float], sampler: str,
             sample_steps: int) -> list[dict]:
    torch.set_num_threads(1)
    module = module_from_checkpoint(root / "run" / "checkpoints" / "last.ckpt")[0]
    rows = []
    for w in guidances:
        for which in ("seen", "held_out"):
            pairs = prompts(which)
            text = [caption(d, c) for d, c in pairs for _ in range(per_prompt)]
            before = cpu_seconds()
            x = module.sample(len(text), text=text, guidance=w, sampler=sampler, steps=sample_steps, seed=1,
                              batch_size=100)
            digits = np.array([d for d, _ in pairs for _ in range(per_prompt)])
            colours = np.array([c for _, c in pairs for _ in range(per_prompt)])
            row = {"guidance": w, "prompts": which, **judge(scorer, read_rgb(x), digits, colours),
                   "cpu_s": round(cpu_seconds() - before, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if w == guidances[-1]:
                save_grid(x, per_prompt, root / f"grid_{which}_w{w:g}.png")
    return rows


def save_grid(x, per_row: int, path: Path) -> None:
    arr = image_grid(x, nrow=per_row)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.text_study", description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="working folder (data, run, sample grids)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps")
    ap.add_argument("--per-prompt", type=int, default=10, help="samples per prompt")
    ap.add_argument("--guidance", default="1,3", help="guidance weights to score, comma-separated")
    ap.add_argument("--sampler", default="dpmpp_2m_sde", help="sampler of src.sample for the scored draws")
    ap.add_argument("--sample-steps", type=int, default=16, help="sampler steps of the scored draws")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--overrides", nargs="*", default=[], help="more src.train overrides")
    ap.add_argument("--skip-train", action="store_true", help="score the run already in ROOT/run")
    args = ap.parse_args(argv)
    start = cpu_seconds()
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "uptime_before": uptime(),
            "cpu_model": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                               if line.startswith("model name")), "unknown")}
    data, n_train = write_data(args.root)
    info["train_items"] = n_train
    if args.skip_train:  # score a run trained before (its own CPU time is not counted here)
        last = torch.load(args.root / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        info["train"] = {"skipped": True, "steps": int(last["global_step"])}
    else:
        info["train"] = train(args.root, data, args.steps, args.overrides)
    scorer = Scorer(RES)
    info["real"] = real_reference(scorer)
    print(json.dumps({"real": info["real"]}), flush=True)
    info["samples"] = evaluate(args.root, scorer, args.per_prompt, [float(w) for w in args.guidance.split(",")],
                               args.sampler, args.sample_steps)
    for row in info["samples"]:
        row["ratio_to_real"] = round(row["both"] / max(info["real"][row["prompts"]]["both"], 1e-9), 3)
    info["uptime_after"] = uptime()
    info["total_cpu_s"] = round(cpu_seconds() - start, 1)
    print(f"total CPU time {info['total_cpu_s']} s; real items: seen {info['real']['seen']['both']:.3f}, "
          f"held-out {info['real']['held_out']['both']:.3f}")
    for row in info["samples"]:
        print(f"guidance {row['guidance']:g} {row['prompts']:>8}: digit {row['digit']:.3f} colour "
              f"{row['colour']:.3f} both {row['both']:.3f} ({row['ratio_to_real']:.0%} of real)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
