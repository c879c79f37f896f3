"""Peak memory of one 3D training step of the MRI U-Net, per volume size, preset and activation checkpointing.

    python benchmarks/mri_memory.py [--presets tiny small] [--sizes 32 48 64 96 128] [--max-gib 12]

Each point runs in a fresh subprocess: build the backbone as the mri domain does (MONAI DiffusionModelUNet,
3D presets, fused attention), then one AdamW step of a denoising loss on a batch of one cubic volume in fp32
on the CPU, and report the process's peak resident set size (ru_maxrss) and the step time. A size is skipped
once a smaller one of the same setting went past --max-gib. Prints one JSON line per point, then a table of
the largest measured size per memory budget. On a GPU the activations dominate the same way, so the ratios
carry over; absolute GPU numbers need a run there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from src.backbones.unet import build_unet
preset, size, ckpt = {preset!r}, {size}, {ckpt}
net = build_unet(3, 1, preset=preset, activation_checkpointing=ckpt, use_flash_attention=True)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
x = torch.randn(1, 1, size, size, size)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
noise = torch.randn_like(x)
loss = (net(x + noise, torch.rand(1)) - noise).square().mean()
loss.backward()
opt.step()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(preset=preset, size=size, checkpointing=ckpt, peak_gib=peak / 2**20,
                      before_step_gib=base / 2**20, step_s=dt,
                      params_m=sum(p.numel() for p in net.parameters()) / 1e6)))
"""


def measure(preset: str, size: int, ckpt: bool) -> dict | None:
    code = CHILD.format(root=str(ROOT), preset=preset, size=size, ckpt=ckpt)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"# {preset} {size}^3 checkpointing={ckpt}: failed ({proc.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], help="3D UNet presets to measure")
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 48, 64, 96, 128], help="cubic volume sides in voxels")
    ap.add_argument("--max-gib", type=float, default=12.0,
                    help="skip larger sizes once a smaller one passed this peak (GiB)")
    ap.add_argument("--budgets", nargs="+", type=float, default=[2, 4, 8, 12],
                    help="memory budgets (GiB) of the summary table")
    args = ap.parse_args()
    rows = []
    for preset in args.presets:
        for ckpt in (False, True):
            for size in sorted(args.sizes):
                r = measure(preset, size, ckpt)
                if r is None:
                    break
                print(json.dumps(r), flush=True)
                rows.append(r)
                if r["peak_gib"] > args.max_gib:
                    break
    budgets = " | ".join(f"<= {b:g} GiB" for b in args.budgets)
    print(f"\n| preset | activation checkpointing | {budgets} |")
    print("| --- | --- | " + " | ".join("---" for _ in args.budgets) + " |")
    for preset in args.presets:
        for ckpt in (False, True):
            cells = []
            for b in args.budgets:
                fit = [r["size"] for r in rows if r["preset"] == preset and r["checkpointing"] == ckpt
                       and r["peak_gib"] <= b]
                cells.append(f"{max(fit)}^3" if fit else "-")
            print(f"| {preset} | {'on' if ckpt else 'off'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
