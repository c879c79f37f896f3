"""Peak memory and step time of 3D training in voxel space vs in an autoencoder's latent space.

    python benchmarks/latent_memory.py [--sizes 64 128] [--preset small] [--ae-preset small] [--max-gib 8]
                                       [--budget-gib 24] [--json out.json]

Each point runs in a fresh subprocess (one thread, fp32, CPU, batch of one cubic volume):
- ``pixel``: one AdamW step of the denoising loss of the mri domain's 3D U-Net on the volume;
- ``latent``: the frozen AutoencoderKL encodes the volume (no grad), then one AdamW step of the same U-Net on
  the latent (3 channels, sides / 4 with the small/base presets): what stage 2 does per batch;
- ``autoencoder``: one AdamW step of stage 1 (L1 + KL, no discriminator) on the volume.
Memory is the process's peak resident set size (``ru_maxrss``, interpreter and libraries included); step time is
that step's wall time (one step, as benchmarks/mri_memory.py: a shared CPU is slow). A point whose peak,
predicted from the next smaller size as baseline + (voxel ratio) x (the step's share above it), exceeds
``--max-gib`` is not run: the table then shows the prediction, marked "~", so the benchmark stays short and
safe on a shared machine. The last table extrapolates the largest cube that fits ``--budget-gib`` the same way
(the activations grow with the voxel count).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("pixel", "latent", "autoencoder")


def child(mode: str, size: int, preset: str, ae_preset: str) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from src.backbones.unet import build_unet
    from src.latent.networks import autoencoder_kwargs, build_autoencoder, kl_divergence, latent_shape

    torch.manual_seed(0)
    x = torch.rand(1, 1, size, size, size) * 2 - 1
    arch = autoencoder_kwargs({"preset": ae_preset, "spatial_dims": 3, "in_channels": 1})
    if mode == "autoencoder":
        net = build_autoencoder(arch)
        encoder = None
    else:
        channels = latent_shape(arch, [1, size, size, size])[0] if mode == "latent" else 1
        net = build_unet(3, channels, preset=preset, use_flash_attention=True)
        encoder = build_autoencoder(arch).requires_grad_(False).eval() if mode == "latent" else None
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        if mode == "autoencoder":
            recon, mu, sigma = net(x)
            loss = (recon - x).abs().mean() + 1e-6 * kl_divergence(mu, sigma)
        else:
            data = x
            if encoder is not None:
                with torch.no_grad():
                    mu, sigma = encoder.encode(x)
                    data = mu + sigma * torch.randn_like(mu)
            noise = torch.randn_like(data)
            loss = (net(data + noise, torch.rand(1)) - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(mode=mode, size=size, preset=preset if mode != "autoencoder" else ae_preset, peak_gib=peak / 2**20,
                before_step_gib=base / 2**20, step_s=dt, params_m=sum(p.numel() for p in net.parameters()) / 1e6,
                trained_shape=list(data_shape(mode, size, arch)))


def data_shape(mode: str, size: int, arch: dict) -> list[int]:
    from src.latent.networks import latent_shape

    return latent_shape(arch, [1, size, size, size]) if mode == "latent" else [1, size, size, size]


def measure(mode: str, size: int, preset: str, ae_preset: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", mode, str(size), preset, ae_preset]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(f"# {mode} {size}^3: failed ({proc.stderr.strip().splitlines()[-1:]})", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predict(prev: dict, size: int) -> float:
    """Peak at ``size`` from a measured smaller point: the step's share above the baseline grows with voxels."""
    share = prev["peak_gib"] - prev["before_step_gib"]
    return prev["before_step_gib"] + share * (size / prev["size"]) ** 3


def largest_fit(prev: dict, budget: float) -> int:
    share = prev["peak_gib"] - prev["before_step_gib"]
    voxels = (budget - prev["before_step_gib"]) / share * prev["size"] ** 3
    return int(voxels ** (1 / 3))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, size, preset, ae_preset = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
        print(json.dumps(child(mode, size, preset, ae_preset)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="cube side lengths to measure")
    ap.add_argument("--preset", default="small", help="diffusion U-Net preset (the mri domain's default)")
    ap.add_argument("--ae-preset", default="small", help="autoencoder preset (factor 4 for small/base/large)")
    ap.add_argument("--max-gib", type=float, default=8.0, help="do not run points predicted above this peak")
    ap.add_argument("--budget-gib", type=float, default=24.0,
                    help="memory for which the largest trainable volume is extrapolated")
    ap.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine, write_json

    rows, last = [], {}
    for mode in MODES:
        for size in sorted(args.sizes):
            prev = last.get(mode)
            if prev is not None and predict(prev, size) > args.max_gib:
                r = dict(mode=mode, size=size, predicted_peak_gib=predict(prev, size), measured=False)
                print(json.dumps(r), flush=True)
                rows.append(r)
                continue
            r = measure(mode, size, args.preset, args.ae_preset)
            if r is None:
                continue
            r["measured"] = True
            print(json.dumps(r), flush=True)
            rows.append(r)
            last[mode] = r
    print(f"\n| mode (what is trained) | {' | '.join(f'{s}^3' for s in sorted(args.sizes))} |")
    print("| --- | " + " | ".join("---" for _ in args.sizes) + " |")
    for mode in MODES:
        cells = []
        for size in sorted(args.sizes):
            r = next((r for r in rows if r["mode"] == mode and r["size"] == size), None)
            if r is None:
                cells.append("failed")
            elif r["measured"]:
                shape = "x".join(map(str, r["trained_shape"]))
                cells.append(f"{r['peak_gib']:.2f} GiB, {r['step_s']:.1f} s ({shape})")
            else:
                cells.append(f"~{r['predicted_peak_gib']:.1f} GiB (predicted, not run)")
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print(f"\n| mode | largest cube in {args.budget_gib:g} GiB (extrapolated from the largest measured size) |")
    print("| --- | --- |")
    fits = {}
    for mode in MODES:
        if mode in last:
            fits[mode] = largest_fit(last[mode], args.budget_gib)
            print(f"| {mode} | {fits[mode]}^3 (from {last[mode]['size']}^3) |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows, "largest_fit": fits})


if __name__ == "__main__":
    main()
