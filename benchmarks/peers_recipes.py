"""The peers' recipes as plain scripts, and sampling from every recipe's trained model (benchmarks/peers.py).

    python -m benchmarks.peers_recipes diffusers --data DIR --out RUN --budget-s S --resolution R --channels C
    python -m benchmarks.peers_recipes diffwave --data DIR --out RUN --budget-s S --sample-rate SR --length L
    python -m benchmarks.peers_recipes sample --kind framework|diffusers|diffwave --run RUN --samplers a:32,b:16
        --num N --out FILE.npz

Each command runs in its own process, started by ``benchmarks.peers``, so its CPU time and peak memory are its
own. Training stops when the process's CPU time (``time.process_time``: start-up and imports included, as for
the ``python -m src.train`` runs) reaches ``--budget-s``; on ``--device cuda`` the budget is wall-clock seconds.

diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` defaults, kept here:
``UNet2DModel`` with ``layers_per_block=2`` and down blocks without attention but the mid-block's (channels
scaled to the parameter count of the framework's network, norm groups to fit), ``DDPMScheduler(1000,
"linear")`` with epsilon prediction, MSE loss, AdamW (lr 1e-4, betas 0.95/0.999, weight decay 1e-6, eps 1e-8),
gradient clipping at 1.0, ``get_scheduler("cosine", warm-up 500)``, ``EMAModel(decay 0.9999, use_ema_warmup,
inv_gamma 1.0, power 3/4)``, batch 16, and sampling with ``DDPMPipeline`` at its default 1000 steps. Not the
example's: the schedule's length (the example's is epochs x batches; here the steps the budget allows,
estimated after 20 steps), no random flips (digits are not symmetric; the framework runs have none either).

DiffWave (Kong et al. 2021) as the ``diffwave`` package's ``params.py`` sets it: T = 50 training steps with
betas linspace(1e-4, 0.05, 50), L1 loss on the noise, Adam lr 2e-4, batch 16, no EMA, no clipping; sampled by
the full 50-step ancestral DDPM (the package's path without ``fast_sampling``). The network is this project's
DiffWave backbone in the paper's BASE layout (30 layers, dilation cycle 10, 512-wide step embedding) with the
residual width that matches the framework network's parameter count (BASE's 64 channels hold 2.6M parameters).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DIFFUSERS_DEFAULTS = {"lr": 1e-4, "warmup": 500, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8,
                      "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0, "ema_power": 0.75, "batch_size": 16,
                      "train_timesteps": 1000, "beta_schedule": "linear", "inference_steps": 1000}
DIFFWAVE_DEFAULTS = {"lr": 2e-4, "batch_size": 16, "train_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.05}


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Budget:
    """Process CPU seconds (CPU) or wall seconds since process start (CUDA) against a limit."""

    def __init__(self, seconds: float, device: torch.device):
        self.seconds, self.cuda = float(seconds), device.type == "cuda"
        self.t0 = time.time()

    def used(self) -> float:
        return time.time() - self.t0 if self.cuda else time.process_time()

    def left(self) -> float:
        return self.seconds - self.used()


# ---- diffusers' recipe --------------------------------------------------------------------------------
def diffusers_unet(resolution: int, channels: int, base: int, layers_per_block: int = 2):
    """The recipe's UNet2DModel at two levels (the framework network's depth), ``base`` channels."""
    from diffusers import UNet2DModel

    groups = next(g for g in (32, 16, 8, 4, 2, 1) if base % g == 0 and base // g >= 2)
    return UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels,
                       layers_per_block=layers_per_block, block_out_channels=(base, 2 * base),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=groups, attention_head_dim=min(8, 2 * base))


def match_diffusers_width(resolution: int, channels: int, target: int) -> int:
    """The base width whose UNet2DModel (layers_per_block 2) is closest in parameters to ``target``."""
    best, best_err = 4, math.inf
    for base in range(4, 257, 2):
        err = abs(num_params(diffusers_unet(resolution, channels, base)) / target - 1)
        if err < best_err:
            best, best_err = base, err
        elif err > best_err:
            break  # the count grows with the width
    return best


def image_batches(data: Path, resolution: int, channels: int, batch_size: int, seed: int = 0):
    """Endless shuffled batches of the folder's images in [-1, 1], read once (the data is small)."""
    from src.domains.image.data import open_image, to_tensor

    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    x = torch.stack([to_tensor(open_image(p), resolution, channels, flip=False) for p in files])
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if len(idx) == batch_size:
                yield x[idx]


def train_diffusers(a) -> dict:
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    d = {**DIFFUSERS_DEFAULTS, "lr": a.lr or DIFFUSERS_DEFAULTS["lr"]}
    device = torch.device(a.device)
    budget = Budget(a.budget_s, device)
    torch.manual_seed(0)
    base = match_diffusers_width(a.resolution, a.channels, a.match_params)
    model = diffusers_unet(a.resolution, a.channels, base).to(device)
    sched = DDPMScheduler(num_train_timesteps=d["train_timesteps"], beta_schedule=d["beta_schedule"],
                          prediction_type="epsilon")
    opt = torch.optim.AdamW(model.parameters(), lr=d["lr"], betas=d["betas"], weight_decay=d["weight_decay"],
                            eps=d["eps"])
    ema = EMAModel(model.parameters(), decay=d["ema_max_decay"], use_ema_warmup=True, inv_gamma=d["ema_inv_gamma"],
                   power=d["ema_power"])
    batches = image_batches(Path(a.data), a.resolution, a.channels, d["batch_size"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=d["warmup"], num_training_steps=10**6)
    step, t_first, horizon = 0, 0.0, None
    while budget.left() > 0:
        if step == 20:
            # the cosine schedule spans the steps the budget allows, estimated from the CPU time of steps 2-20
            horizon = step + int(budget.left() / ((budget.used() - t_first) / 19))
            lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=d["warmup"],
                                     num_training_steps=max(horizon, step + 1))
            for _ in range(step):
                lr_sched.step()
        clean = next(batches).to(device)
        noise = torch.randn_like(clean)
        t = torch.randint(0, d["train_timesteps"], (len(clean),), device=device).long()
        with autocast:
            pred = model(sched.add_noise(clean, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        ema.step(model.parameters())
        opt.zero_grad(set_to_none=True)
        step += 1
        if step == 1:
            t_first = budget.used()
    ema.copy_to(model.parameters())  # the example saves the EMA weights in its pipeline
    DDPMPipeline(unet=model, scheduler=sched).save_pretrained(a.out)
    return {"steps": step, "params": num_params(model), "base_channels": base, "lr_horizon": horizon, "recipe": d}


# ---- DiffWave's recipe --------------------------------------------------------------------------------
def diffwave_backbone(width: int, channels: int):
    """The DiffWave paper's BASE layout (30 residual layers, dilation cycle 10, 512-wide step embedding) at
    ``width`` residual channels (BASE: 64)."""
    from src.backbones import build_backbone

    return build_backbone({"name": "diffwave", "in_channels": channels, "preset": "base", "residual_channels": width})


def match_diffwave_width(channels: int, target: int) -> int:
    """The residual width whose BASE-layout DiffWave is closest in parameters to ``target``."""
    best, best_err = 4, math.inf
    for width in range(4, 257, 2):
        err = abs(num_params(diffwave_backbone(width, channels)) / target - 1)
        if err < best_err:
            best, best_err = width, err
        elif err > best_err:
            break  # the count grows with the width
    return best


def audio_batches(data: Path, length: int, channels: int, batch_size: int, seed: int = 0):
    import soundfile as sf

    files = sorted(p for p in data.rglob("*.wav"))
    clips = []
    for p in files:
        w, _ = sf.read(p, dtype="float32", always_2d=True)
        w = torch.from_numpy(w.T.copy())
        w = w.mean(0, keepdim=True).repeat(channels, 1) if w.shape[0] != channels else w
        clips.append(F.pad(w, (0, max(0, length - w.shape[-1])))[:, :length])
    x = torch.stack(clips)
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randint(0, len(x), (batch_size * 8,), generator=g).split(batch_size):
            yield x[idx]


def diffwave_scheduler():
    from diffusers import DDPMScheduler

    d = DIFFWAVE_DEFAULTS
    betas = np.linspace(d["beta_start"], d["beta_end"], d["train_timesteps"]).tolist()
    # DiffWave's sampling variance is beta-tilde (fixed_small); no clipping of the x0 estimate
    return DDPMScheduler(num_train_timesteps=d["train_timesteps"], trained_betas=betas, variance_type="fixed_small",
                         clip_sample=False, prediction_type="epsilon")


def train_diffwave(a) -> dict:
    d = {**DIFFWAVE_DEFAULTS, "lr": a.lr or DIFFWAVE_DEFAULTS["lr"]}
    device = torch.device(a.device)
    budget = Budget(a.budget_s, device)
    torch.manual_seed(0)
    width = match_diffwave_width(a.channels, a.match_params)
    model = diffwave_backbone(width, a.channels).to(device)
    sched = diffwave_scheduler()
    opt = torch.optim.Adam(model.parameters(), lr=d["lr"])
    batches = audio_batches(Path(a.data), a.length, a.channels, d["batch_size"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    step = 0
    while budget.left() > 0:
        clean = next(batches).to(device)
        noise = torch.randn_like(clean)
        t = torch.randint(0, d["train_timesteps"], (len(clean),), device=device)
        with autocast:
            # the backbone's embedding scales its input by 1000: t / 1000 feeds it the step index, as DiffWave
            pred = model(sched.add_noise(clean, noise, t), t.float() / 1000)
        loss = F.l1_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
    Path(a.out).mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "width": width, "channels": a.channels},
               Path(a.out) / "diffwave.pt")
    return {"steps": step, "params": num_params(model), "residual_channels": width, "recipe": d}


# ---- sampling -----------------------------------------------------------------------------------------
def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def load_framework(run: Path, device: torch.device):
    from src.latent.stage import module_from_checkpoint

    module = module_from_checkpoint(run / "checkpoints" / "last.ckpt", device=device)[0]
    return module, num_params(module.backbone)


def draw_framework(module, sampler: str, steps: int, num: int, device: torch.device, batch: int, **_):
    return module.sample(num, sampler=sampler, steps=steps, seed=1, batch_size=batch).float().cpu()


def load_diffusers(run: Path, device: torch.device):
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(run).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, num_params(pipe.unet)


def draw_diffusers(pipe, sampler: str, steps: int, num: int, device: torch.device, batch: int, **_):
    from diffusers import DDIMPipeline, DDPMPipeline, DPMSolverMultistepScheduler

    if sampler == "ddim":
        pipe = DDIMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)  # DDIMPipeline converts the scheduler
    elif sampler == "dpmpp_2m":  # DPM-Solver++(2M), the scheduler's default algorithm
        pipe = DDPMPipeline(unet=pipe.unet, scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in range(0, num, batch):
        n = min(batch, num - i)
        img = pipe(batch_size=n, generator=_generator(device, 1 + i), num_inference_steps=steps,
                   output_type="np").images  # (n, H, W, C) in [0, 1]
        out.append(torch.from_numpy(np.asarray(img)).permute(0, 3, 1, 2) * 2 - 1)
    return torch.cat(out).float()


def load_diffwave(run: Path, device: torch.device):
    ckpt = torch.load(run / "diffwave.pt", map_location="cpu", weights_only=True)
    model = diffwave_backbone(ckpt["width"], ckpt["channels"]).to(device).eval()
    model.load_state_dict(ckpt["state_dict"])
    model.channels = ckpt["channels"]
    return model, num_params(model)


@torch.no_grad()
def draw_diffwave(model, sampler: str, steps: int, num: int, device: torch.device, batch: int, length: int = 8000):
    sched = diffwave_scheduler()
    sched.set_timesteps(DIFFWAVE_DEFAULTS["train_timesteps"])
    out = []
    for i in range(0, num, batch):
        g = _generator(device, 1 + i)
        x = torch.randn(min(batch, num - i), model.channels, length, generator=g, device=device)
        for t in sched.timesteps:
            eps = model(x, torch.full((len(x),), float(t) / 1000, device=device))
            x = sched.step(eps, t, x, generator=g).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out).float()


SAMPLE = {"framework": (load_framework, draw_framework), "diffusers": (load_diffusers, draw_diffusers),
          "diffwave": (load_diffwave, draw_diffwave)}


def sample_all(a) -> dict:
    """Every ``sampler:steps[:num]`` of ``--samplers`` from one run; the CPU seconds (wall on CUDA) of the
    sampling alone (loading excluded) and the samples per second for each."""
    device = torch.device(a.device)
    load, draw = SAMPLE[a.kind]
    model, params = load(Path(a.run), device)
    arrays, rows = {}, []
    for item in a.samplers.split(","):
        name, steps, num = (item.split(":") + [None])[:3]
        num = int(num or a.num)
        if num <= 0:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, w0 = time.process_time(), time.time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            x = draw(model, name, int(steps), num, device, a.batch_size, length=a.length)
        if device.type == "cuda":
            torch.cuda.synchronize()
        cost = time.time() - w0 if device.type == "cuda" else time.process_time() - t0
        arrays[f"{name}_{steps}"] = x.numpy()
        rows.append({"sampler": name, "steps": int(steps), "n": num, "cost_s": round(cost, 2),
                     "samples_per_s": round(num / max(cost, 1e-9), 3)})
    np.savez_compressed(a.out, **arrays)
    return {"params": params, "sampling": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers_recipes", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["diffusers", "diffwave", "sample"],
                    help="train diffusers' or DiffWave's recipe, or sample from a run")
    ap.add_argument("--data", type=Path, help="training folder (train split written by benchmarks.peers)")
    ap.add_argument("--out", type=Path, required=True, help="run folder (training) or .npz (sample)")
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="training: CPU seconds of this process (wall seconds on CUDA), start-up included")
    ap.add_argument("--resolution", type=int, default=16, help="diffusers: image side")
    ap.add_argument("--channels", type=int, default=1, help="image or audio channels")
    ap.add_argument("--match-params", type=int, default=164_000,
                    help="diffusers, diffwave: the parameter count to match (the framework network's)")
    ap.add_argument("--length", type=int, default=8000, help="audio: clip length in samples")
    ap.add_argument("--lr", type=float, default=None, help="a learning rate other than the recipe's")
    ap.add_argument("--kind", choices=sorted(SAMPLE), help="sample: whose run folder")
    ap.add_argument("--run", type=Path, help="sample: the run folder")
    ap.add_argument("--samplers", default="preset:32", help="sample: name:steps[:num],...")
    ap.add_argument("--num", type=int, default=300, help="sample: samples per sampler unless name:steps:num says")
    ap.add_argument("--batch-size", type=int, default=100, help="sample: samples drawn at once")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="fp32, or bf16 autocast")
    ap.add_argument("--result", type=Path, help="JSON file for this step's result")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if a.what == "diffusers":
        result = train_diffusers(a)
    elif a.what == "diffwave":
        result = train_diffwave(a)
    else:
        result = sample_all(a)
    result["maxrss_mb"] = round(maxrss_mb(), 1)
    result["cpu_s"] = round(time.process_time(), 2)
    text = json.dumps(result)
    if a.result:
        a.result.write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
