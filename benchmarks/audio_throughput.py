"""Training throughput of the audio model: samples (clips) per second and seconds of audio per second.

    python benchmarks/audio_throughput.py [--preset base] [--batch-size 8] [--clip-seconds 0.5]
                                          [--sample-rate 16000] [--steps 5] [--threads N] [--mel]

Times full optimizer steps of the DiffusionModule (DDPM loss, forward, backward, AdamW, EMA update) on
batches of the built-in sounds loaded beforehand, after one warm-up step, and separately how fast the
built-in data is generated. Prints one line per measurement; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.domains import build_datamodule  # noqa: E402
from src.module import DiffusionModule  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="base", help="audio backbone preset (tiny|small|base)")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per step")
    ap.add_argument("--clip-seconds", type=float, default=0.5, help="length of each clip")
    ap.add_argument("--sample-rate", type=int, default=16000, help="samples per second of audio")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--mel", action="store_true", help="vocoder: condition on the clip's log-mel")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dm = build_datamodule(dict(name="audio", sample_rate=args.sample_rate, clip_seconds=args.clip_seconds,
                               batch_size=args.batch_size, num_workers=0, mel_conditioning=args.mel,
                               builtin_size=max(64, 4 * args.batch_size)))
    dm.setup()
    loader = iter(dm.train_dataloader())
    t0 = time.perf_counter()
    batches = [next(loader) for _ in range(args.steps + 1)]
    data_rate = (args.steps + 1) * args.batch_size / (time.perf_counter() - t0)

    module = DiffusionModule(backbone=dict(name="diffwave", preset=args.preset, in_channels=1,
                                           mel_conditioning=args.mel, n_mels=80),
                             diffusion=dict(family="ddpm"), data_shape=dm.data_shape, ema=dict(decay=0.999))
    opt = torch.optim.AdamW(module.backbone.parameters(), lr=1e-4)

    def step(batch, i: int) -> None:
        x, cond = batch["x"], batch.get("cond")
        g = torch.Generator().manual_seed(i)
        u, noise = torch.rand(x.shape[0], generator=g), torch.randn(x.shape, generator=g)
        loss = module.objective.loss(module.backbone, x, u, noise, cond).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        module.ema.update(module.backbone)

    step(batches[0], 0)  # warm-up: allocator and kernel selection
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i, batch in enumerate(batches[1:], 1):
        step(batch, i)
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rate = args.steps * args.batch_size / dt
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device cpu")
    print(f"model: diffwave preset={args.preset} ({module.num_parameters() / 1e6:.2f}M parameters), "
          f"mel conditioning {'on' if args.mel else 'off'}, clips {dm.data_shape} at {args.sample_rate} Hz,"
          f" batch {args.batch_size}, {args.steps} timed steps")
    print(f"training: {rate:.2f} samples/s ({rate * args.clip_seconds:.2f} s of audio per s, "
          f"{dt / args.steps:.2f} s per step, {cpu / args.steps:.2f} s of CPU time per step)")
    # on a shared machine the wall-clock rate depends on other jobs; the load average says how busy it was
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")
    print(f"built-in data generation: {data_rate:.0f} samples/s")


if __name__ == "__main__":
    main()
