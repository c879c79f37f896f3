"""Quality per CPU-minute against the peers: the same data, budget, parameter count and scorer for every recipe.

    python -m benchmarks.peers --domain image --minutes 2,5 --data /tmp/digits --json peers.json

Recipes, each trained in its own process, one after another, one thread each, until the process's CPU time
(start-up and imports included) reaches the budget, then sampled in a second process whose CPU time per sample
is measured (docs/guide/benchmarks.md):

- ``framework``: this framework's recommended preset as a user types it, ``python -m src.train
  experiment=quickstart domain=image datamodule.path=TRAIN ...`` (audio: ``experiment=audio_quickstart``, the
  one-stage mel-image model decoded by Griffin-Lim) with no step limit, stopped by SIGTERM at the budget: it saves
  ``last.ckpt`` and stops; its own sampler, dpmpp_2m_sde 32 steps.
- ``edm``: the same command with ``diffusion=edm diffusion.sampler=heun diffusion.steps=16`` (EDM
  preconditioning and loss, Heun's 2nd-order sampler at 31 network evaluations), so recipe and code separate;
  also drawn with the preset's sampler.
- ``diffusers`` (image): diffusers' ``train_unconditional`` example as a plain script over diffusers' public API
  (benchmarks/peers_recipes.py), sampled with ``DDPMPipeline`` at its default 1000 steps (``--ddpm-samples``
  samples: it costs 30x the others) and with DDIM and DPM-Solver++(2M) at the framework's step count.
- ``diffwave`` (audio): the DiffWave recipe's published hyper-parameters on this project's DiffWave backbone, the
  paper's BASE layout (30 layers, dilation cycle 10) with its width set to the framework network's parameter count.

With no images in ``--data`` (a missing or empty folder) the image benchmark writes scikit-learn's 1,797 real
handwritten digits there. ``--device cuda --precision bf16`` runs the same benchmark on one GPU (budgets are then
wall-clock seconds of each process; benchmarks/gpu_check.sh calls it with PEERS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from src.errors import ConfigError, ProjectError
from src.safe_load import safe_torch_load

from .peers_score import IMAGE_EXTENSIONS, AudioData, AudioScorer, ImageData, ImageScorer, labelled_files, write_digits

RECIPES = {"image": ("framework", "edm", "diffusers"), "audio": ("framework", "edm", "diffwave")}
PARAM_TOLERANCE = 0.10
TICKS = os.sysconf("SC_CLK_TCK")


def parse_minutes(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise ConfigError(f"--minutes must be positive numbers separated by commas (e.g. 2,5,10), got {text!r}.")
    return values


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
            "PYTHONUNBUFFERED": "1"}


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (its threads included), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_budgeted(cmd: list[str], log: Path, budget_s: float | None, cuda: bool, started: Path | None = None,
                 grace_s: float = 300.0) -> dict:
    """Run ``cmd``; at ``budget_s`` of its CPU time (wall time on CUDA) send SIGTERM (src.train saves and stops;
    None: the command stops itself, as the plain scripts do); its exit status, CPU seconds and peak memory.

    ``started``: a file that appears when training has begun (src.train's metrics.jsonl); no signal before it
    has existed for a second, since a signal during start-up would end the run before its stop handler is set."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        t0, termed, ready_at = time.time(), None, None if started else 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            used = time.time() - t0 if cuda else proc_cpu_s(proc.pid)
            if ready_at is None and started.exists():
                ready_at = time.time()
            ready = ready_at is not None and time.time() - ready_at >= (1.0 if started else 0.0)
            if termed is None and ready and budget_s is not None and used >= budget_s:
                proc.send_signal(signal.SIGTERM)
                termed = time.time()
            elif termed is not None and time.time() - termed > grace_s:
                proc.kill()
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "wall_s": round(time.time() - t0, 1), "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "stopped_by_signal": termed is not None}


def train_command(recipe: str, a, train_dir: Path, run: Path, budget_s: float, shape: dict,
                  framework_cfg: dict) -> list[str]:
    py = sys.executable
    if recipe in ("framework", "edm"):
        # each domain's recommended preset: images the quickstart, audio the one-stage mel-image model
        experiment = "quickstart" if a.domain == "image" else "audio_quickstart"
        cmd = [py, "-m", "src.train", f"experiment={experiment}", f"domain={a.domain}", f"datamodule.path={train_dir}",
               "datamodule.num_workers=0", "logger=none", "threads=1", "trainer.max_steps=-1",
               f"paths.output_dir={run}", "trainer.enable_progress_bar=false"]
        if a.domain == "image":
            cmd += [f"datamodule.resolution={shape['resolution']}", f"datamodule.channels={shape['channels']}",
                    "datamodule.random_flip=false"]
        else:
            cmd += [f"datamodule.sample_rate={a.sample_rate}", f"datamodule.clip_seconds={a.clip_seconds}",
                    "datamodule.channels=1"]
        if a.device == "cuda":
            precision = "bf16-mixed" if a.precision == "bf16" else "32-true"
            cmd += ["trainer.accelerator=gpu", f"trainer.precision={precision}"]
        if recipe == "edm":
            cmd += ["diffusion=edm", "diffusion.sampler=heun", "diffusion.steps=16"]
        return cmd + list(a.overrides)
    common = ["--data", str(train_dir), "--out", str(run), "--budget-s", str(budget_s), "--device", a.device,
              "--precision", a.precision, "--result", str(run / "train.json")]
    if recipe == "diffusers":
        return [py, "-m", "benchmarks.peers_recipes", "diffusers", *common, "--resolution", str(shape["resolution"]),
                "--channels", str(shape["channels"]), "--match-params", str(framework_cfg["params"])]
    return [py, "-m", "benchmarks.peers_recipes", "diffwave", *common, "--match-params", str(framework_cfg["params"]),
            "--length", str(shape["length"]), "--channels", "1"]


def samplers_for(recipe: str, a, framework_cfg: dict) -> tuple[str, list[str]]:
    """The sampling process's ``--kind`` and its ``name:steps[:num]`` list."""
    steps = framework_cfg["steps"]
    if recipe == "framework":
        return "framework", [f"{framework_cfg['sampler']}:{steps}"]
    if recipe == "edm":
        return "framework", ["heun:16", f"{framework_cfg['sampler']}:{steps}"]
    if recipe == "diffusers":
        return "diffusers", [f"ddpm:1000:{a.ddpm_samples}", f"ddim:{steps}", f"dpmpp_2m:{steps}"]
    return "diffwave", ["ddpm:50"]


def run_config(run: Path) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    return {"sampler": str(cfg.diffusion.sampler), "steps": int(cfg.diffusion.steps),
            "preset": str(cfg.backbone.preset)}


def checkpoint_step(run: Path) -> int | None:
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        return None
    return int(safe_torch_load(ckpt)["global_step"])


def log_tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""


def run_budget(a, minutes: float, train_dir: Path, shape: dict, scorer) -> dict:
    budget_s = minutes * 60
    folder = a.out / f"{minutes:g}min"
    rows, samples, fw = [], {}, {"params": None, "sampler": "dpmpp_2m_sde", "steps": 32, "preset": "tiny"}
    for recipe in RECIPES[a.domain]:
        run = folder / recipe
        if run.exists():
            shutil.rmtree(run)  # a fresh run: src.train would resume from an old last.ckpt
        run.mkdir(parents=True)
        cmd = train_command(recipe, a, train_dir, run, budget_s, shape, fw)
        print(f"[{minutes:g} min] {recipe}: {' '.join(cmd[1:])}", flush=True)
        before = uptime()
        by_cli = recipe in ("framework", "edm")
        train = run_budgeted(cmd, run / "train.log", budget_s if by_cli else None, a.device == "cuda",
                             started=run / "metrics.jsonl" if by_cli else None)
        if train["returncode"] not in ((0, 128 + signal.SIGTERM) if by_cli else (0,)):
            raise RuntimeError(f"{recipe} training failed (exit {train['returncode']}):\n{log_tail(run / 'train.log')}")
        extra = json.loads((run / "train.json").read_text()) if (run / "train.json").exists() else {}
        steps = extra.get("steps", checkpoint_step(run))
        if recipe == "framework":
            fw.update(run_config(run))
        kind, plan = samplers_for(recipe, a, fw)
        out = run / "samples.npz"
        scmd = [sys.executable, "-m", "benchmarks.peers_recipes", "sample", "--kind", kind, "--run", str(run),
                "--samplers", ",".join(plan), "--num", str(a.samples), "--out", str(out), "--device", a.device,
                "--precision", a.precision, "--result", str(run / "sample.json"), "--batch-size", "100"]
        if a.domain == "audio":
            scmd += ["--length", str(shape["length"]), "--batch-size", "16"]
        sample = run_budgeted(scmd, run / "sample.log", None, False)
        if sample["returncode"] != 0:
            raise RuntimeError(f"{recipe} sampling failed:\n{log_tail(run / 'sample.log')}")
        info = json.loads((run / "sample.json").read_text())
        if recipe == "framework":
            fw["params"] = info["params"]
        arrays = np.load(out)
        for s in info["sampling"]:
            key = f"{s['sampler']}_{s['steps']}"
            score = scorer.score(scorer.samples(arrays[key]))
            rows.append({"recipe": recipe, "params": info["params"], "train_steps": steps,
                         "train_cpu_s": train["cpu_s"], "train_wall_s": train["wall_s"],
                         "train_maxrss_mb": train["maxrss_mb"], "sampler": s["sampler"], "steps": s["steps"],
                         **score, "samples_per_cpu_s": s["samples_per_s"], "sample_maxrss_mb": info["maxrss_mb"],
                         "uptime_before": before, "command": " ".join(cmd[1:])})
            samples[f"{recipe} {s['sampler']} {s['steps']}"] = arrays[key]
            print(json.dumps({k: rows[-1][k] for k in ("recipe", "sampler", "steps", "frechet", "train_steps")}),
                  flush=True)
    check_params(rows)
    grid = a.out / f"grid_{a.domain}_{minutes:g}min.png"
    save_grid(samples, grid, a.domain, a.sample_rate)
    return {"minutes": minutes, "budget_s": budget_s, "rows": rows, "grid": str(grid), "uptime_after": uptime()}


def check_params(rows: list[dict]) -> None:
    ref = next(r["params"] for r in rows if r["recipe"] == "framework")
    for r in rows:
        r["params_vs_framework"] = round(r["params"] / ref - 1, 4)
        if abs(r["params"] / ref - 1) > PARAM_TOLERANCE:
            raise RuntimeError(f"{r['recipe']} has {r['params']} parameters, more than 10% from the framework's {ref}.")


def save_grid(samples: dict, path: Path, domain: str, sample_rate: int, per: int = 64) -> None:
    """Each recipe's first ``per`` samples as one grid, side by side, captioned (audio: log-mel images)."""
    import torch
    from PIL import Image, ImageDraw

    from src.media import image_grid

    tiles = []
    for name, x in samples.items():
        x = torch.from_numpy(np.asarray(x))[:per]
        if domain == "image":
            img = image_grid(x, nrow=int(np.ceil(np.sqrt(len(x)))))
            img = np.repeat(np.repeat(img, 2, 0), 2, 1)
        else:
            from src.domains.audio.media import spectrogram_image

            img = np.concatenate([spectrogram_image(w, sample_rate, scale=1) for w in x[:8]], 1)
        tiles.append((name, img))
    h = max(t.shape[0] for _, t in tiles) + 16
    w = sum(t.shape[1] + 8 for _, t in tiles)
    canvas = Image.new("RGB", (w, h), "white")
    draw, x0 = ImageDraw.Draw(canvas), 0
    for name, t in tiles:
        canvas.paste(Image.fromarray(t), (x0, 16))
        draw.text((x0 + 2, 2), name, fill="black")
        x0 += t.shape[1] + 8
    canvas.save(path)


def markdown(result: dict) -> str:
    lines = []
    for b in result["budgets"]:
        lines += [f"\n{b['minutes']:g} CPU-minutes per recipe ({result['domain']}; reference: real train items "
                  f"Frechet {result['reference']['frechet']:.3f}"
                  + (f", max-prob {result['reference']['max_prob']:.3f}" if "max_prob" in result["reference"] else "")
                  + ")",
                  "| recipe | params | train steps | train CPU-s | sampler | steps | n | Frechet | max-prob | "
                  "samples / CPU-s | peak MB train / sample |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in b["rows"]:
            mp = f"{r['max_prob']:.3f}" if "max_prob" in r else ""
            lines.append(f"| {r['recipe']} | {r['params']:,} | {r['train_steps']} | {r['train_cpu_s']:.0f} | "
                         f"{r['sampler']} | {r['steps']} | {r['n']} | {r['frechet']:.3f} | {mp} | "
                         f"{r['samples_per_cpu_s']:.2f} | {r['train_maxrss_mb']:.0f} / {r['sample_maxrss_mb']:.0f} |")
    return "\n".join(lines)


def prepare(a):
    """The data's train split in ``OUT/train`` and the scorer; the digits first when ``--data`` has no images."""
    if a.domain == "image":
        if not a.data.exists() or not labelled_files(a.data, IMAGE_EXTENSIONS)[0]:
            print(f"{a.data} holds no images: writing scikit-learn's 1,797 handwritten digits there.", flush=True)
            write_digits(a.data)
        res = a.resolution or _first_image_side(a.data)
        data = ImageData(a.data, res, a.channels or _channels(a.data), held_out=a.held_out)
        shape = {"resolution": res, "channels": data.shape[0]}
        scorer = ImageScorer(data)
    else:
        if not a.data.is_dir():
            raise ConfigError(f"--data {a.data} is not a folder; for audio pass a folder of sound files (wav/flac/"
                              "ogg), e.g. /usr/share/sounds/alsa after apt-get install alsa-utils.")
        length = int(round(a.sample_rate * a.clip_seconds))
        data = AudioData(a.data, a.sample_rate, length, held_out=a.held_out)
        shape = {"length": length}
        scorer = AudioScorer(data)
    train_dir = a.out / "train"
    if train_dir.exists():
        shutil.rmtree(train_dir)
    data.write_train(train_dir)
    return train_dir, shape, scorer


def _first_image_side(data: Path) -> int:
    from PIL import Image

    with Image.open(labelled_files(data, IMAGE_EXTENSIONS)[0][0]) as im:
        side = min(im.size)
    return max(8, side - side % 4)


def _channels(data: Path) -> int:
    from PIL import Image

    with Image.open(labelled_files(data, IMAGE_EXTENSIONS)[0][0]) as im:
        return 1 if im.mode in ("L", "I;16", "I", "1") else 3


def check_mel_clip(sample_rate: int, clip_seconds: float) -> None:
    """The audio preset's mel images need whole frames (``latent.mel.hop``) and a number of them that its U-Net
    (``latent.mel.preset``) can halve at each level, both read from configs/experiment/audio_quickstart.yaml."""
    from omegaconf import OmegaConf

    from src.backbones.unet import PRESETS

    preset = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "audio_quickstart.yaml"
    mel = OmegaConf.load(preset).latent.mel
    hop, frames = int(mel.hop), 2 ** (len(PRESETS[str(mel.preset)]["channels"]) - 1)
    samples, unit = int(round(sample_rate * clip_seconds)), hop * frames
    if samples % unit:
        fit = unit * max(1, round(samples / unit)) / sample_rate
        raise ConfigError(f"--clip-seconds {clip_seconds:g} at --sample-rate {sample_rate} gives {samples} samples; "
                          f"the audio preset needs a multiple of {unit} ({frames} mel frames of {hop}), e.g. "
                          f"--clip-seconds {fit:g}.")


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    ap.add_argument("--domain", choices=sorted(RECIPES), required=True, help="image or audio (which recipes run)")
    ap.add_argument("--minutes", default="2,5,10", help="CPU-minutes per recipe, comma-separated (e.g. 2,5,10)")
    ap.add_argument("--data", type=Path, required=True,
                    help="folder of images or sounds in class subfolders (image: missing or empty = the digits)")
    ap.add_argument("--out", type=Path, default=Path("peers_runs"), help="working folder (runs, samples, grids)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--samples", type=int, default=300, help="samples scored per recipe and sampler")
    ap.add_argument("--ddpm-samples", type=int, default=100,
                    help="samples from diffusers' 1000-step DDPMPipeline (0: skip it)")
    ap.add_argument("--held-out", type=int, default=300, help="real items held out for the scorer")
    ap.add_argument("--resolution", type=int, default=None, help="image side (default: the first image's)")
    ap.add_argument("--channels", type=int, choices=[1, 3], default=None, help="image channels (default: guessed)")
    ap.add_argument("--sample-rate", type=int, default=16000, help="audio: sample rate of every recipe (Hz)")
    ap.add_argument("--clip-seconds", type=float, default=1.024,
                    help="audio: clip length of every recipe (the mel-image preset needs a multiple of 8 frames of "
                         "256 samples: 1.024 s at 16 kHz)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cpu (budgets in process CPU time) or cuda (one GPU; budgets in wall-clock time)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="fp32, or bf16 autocast for training and sampling (the GPU check uses bf16)")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for the src.train recipes")
    a = ap.parse_args(argv)
    a.minutes_list = parse_minutes(a.minutes)
    if a.domain == "audio" and not any(o.startswith(("latent.mel.", "+latent.mel.")) for o in a.overrides):
        check_mel_clip(a.sample_rate, a.clip_seconds)
    for key in ("samples", "held_out"):
        if getattr(a, key) < 2:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 2, got {getattr(a, key)}.")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda found no CUDA device; run on a GPU machine or leave --device out.")
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        a = parse(argv)
        a.out.mkdir(parents=True, exist_ok=True)
        train_dir, shape, scorer = prepare(a)
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"domain": a.domain, "data": str(a.data), "device": a.device, "precision": a.precision,
              "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shape": shape,
              "uptime_before": uptime(), "reference": scorer.reference(), "budgets": []}
    for minutes in a.minutes_list:
        result["budgets"].append(run_budget(a, minutes, train_dir, shape, scorer))
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(result, indent=1))
    result["uptime_after"] = uptime()
    print(markdown(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
