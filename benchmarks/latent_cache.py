"""Stage 2 of 3D latent diffusion: encoding each batch on the fly vs training from a latent cache.

    python benchmarks/latent_cache.py [--sizes 64 128] [--preset small] [--ae-preset small] [--steps 2]
                                      [--json out.json]

Each point runs in a fresh subprocess (one thread, fp32, CPU, batch of one cubic volume), so its peak resident
set size (``ru_maxrss``, interpreter and libraries included) is its own:
- ``encode``: the one-off cost of a cache: the frozen AutoencoderKL encodes one volume (posterior mean and
  sigma, so that training can still draw a posterior sample per step) and writes them with ``torch.save``;
  reports the encoding time per item and the cache's size per item in bytes (the file, and the mean and
  sigma tensors alone);
- ``on_the_fly``: what ``latent.autoencoder=`` does per step now: encode the volume (no grad), draw a posterior
  sample, one AdamW step of the mri domain's 3D U-Net on the latent;
- ``cached``: the same U-Net step on a posterior sample drawn from the cached mean and sigma (loaded from the
  ``encode`` point's file; no autoencoder in the process).
Step times: one warm-up step, then the median of ``--steps`` timed steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("encode", "on_the_fly", "cached")


def child(mode: str, size: int, preset: str, ae_preset: str, steps: int, cache: str) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from src.backbones.unet import build_unet
    from src.latent.networks import autoencoder_kwargs, build_autoencoder, latent_shape

    torch.manual_seed(0)
    arch = autoencoder_kwargs({"preset": ae_preset, "spatial_dims": 3, "in_channels": 1})
    shape = latent_shape(arch, [1, size, size, size])
    x = torch.rand(1, 1, size, size, size) * 2 - 1
    row = dict(mode=mode, size=size, latent_shape=shape)
    if mode in ("encode", "on_the_fly"):
        encoder = build_autoencoder(arch).requires_grad_(False).eval()
    if mode == "encode":
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        with torch.no_grad():
            mu, sigma = encoder.encode(x)
        encode_s = time.perf_counter() - t0
        torch.save({"mu": mu[0].clone(), "sigma": sigma[0].clone()}, cache)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return dict(row, encode_s=encode_s, cache_bytes=Path(cache).stat().st_size,
                    tensor_bytes=4 * (mu.numel() + sigma.numel()), input_bytes=x.numel() * 4,
                    peak_gib=peak / 2**20, before_gib=base / 2**20)
    net = build_unet(3, shape[0], preset=preset, use_flash_attention=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    if mode == "cached":
        item = torch.load(cache, map_location="cpu", weights_only=True)
        mu, sigma = item["mu"][None], item["sigma"][None]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        with torch.no_grad():
            if mode == "on_the_fly":
                m, s = encoder.encode(x)
            else:
                m, s = mu, sigma
            z = m + s * torch.randn_like(m)
        noise = torch.randn_like(z)
        loss = (net(z + noise, torch.rand(1)) - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(row, step_s=statistics.median(times), step_times=times, peak_gib=peak / 2**20,
                before_gib=base / 2**20)


def measure(mode: str, size: int, args, cache: Path) -> dict | None:
    cmd = [sys.executable, __file__, "--child", mode, str(size), args.preset, args.ae_preset, str(args.steps),
           str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(f"# {mode} {size}^3: failed ({proc.stderr.strip().splitlines()[-1:]})", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, size, preset, ae_preset, steps, cache = sys.argv[2:8]
        print(json.dumps(child(mode, int(size), preset, ae_preset, int(steps), cache)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="cube side lengths to measure")
    ap.add_argument("--preset", default="small", help="diffusion U-Net preset (the mri domain's default)")
    ap.add_argument("--ae-preset", default="small", help="autoencoder preset (factor 4 for small/base/large)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine, write_json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted(args.sizes):
            cache = Path(tmp) / f"latent_{size}.pt"
            for mode in MODES:
                r = measure(mode, size, args, cache)
                if r is None:
                    break  # no cache file: the cached point cannot run either
                print(json.dumps(r), flush=True)
                rows.append(r)
    print("\n| size | latent | on the fly: peak, step | cached: peak, step "
          "| one-off encode per item | cache per item |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in sorted(args.sizes):
        got = {r["mode"]: r for r in rows if r["size"] == size}
        if len(got) < len(MODES):
            print(f"| {size}^3 | failed | | | | |")
            continue
        e, f, c = got["encode"], got["on_the_fly"], got["cached"]
        print(f"| {size}^3 | {'x'.join(map(str, e['latent_shape']))} | {f['peak_gib']:.2f} GiB, {f['step_s']:.2f} s "
              f"| {c['peak_gib']:.2f} GiB, {c['step_s']:.2f} s | {e['encode_s']:.2f} s | "
              f"{e['cache_bytes']} B file, {e['tensor_bytes']} B of fp32 mean + sigma "
              f"({e['tensor_bytes'] / e['input_bytes']:.3f} of the fp32 volume) |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
