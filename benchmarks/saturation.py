"""Share of saturated pixels (0 or 255) in samples of an image checkpoint, per sampler, on the flow grid
from the training clamp (t = 0.9999, sigma ~ 1e4) and from ``diffusion.sigma_max`` (80).

    python -m benchmarks.saturation CKPT [--num 64] [--seed 0]

Only for flow-matching image checkpoints; the same seeds for every row (docs/studies/sampling.md has a run).
"""

from __future__ import annotations

import argparse

from src.latent.stage import module_from_checkpoint
from src.media import to_uint8

RUNS = [("euler", 50), ("heun", 25), ("heun", 16), ("heun", 8), ("dpmpp_2m", 32), ("dpmpp_2m", 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="a trained image checkpoint (flow matching shows the effect)")
    ap.add_argument("--num", type=int, default=64, help="samples drawn per sampler and step count")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws (the same for every sampler)")
    args = ap.parse_args()
    module, _ = module_from_checkpoint(args.ckpt)
    if not hasattr(module.objective, "sigma_max") or module.diffusion_cfg.get("family") != "flow":
        raise SystemExit("error: this benchmark compares flow-matching grids; pass a checkpoint trained with "
                         "diffusion=flow.")
    print("| grid start | sampler | steps | pixels at 255 | pixels at 0 |\n| --- | --- | --- | --- | --- |")
    for sigma_max in (9999.0, 80.0):
        module.objective.sigma_max = sigma_max
        for sampler, steps in RUNS:
            u = to_uint8(module.sample(args.num, sampler=sampler, steps=steps, seed=args.seed))
            print(f"| sigma {sigma_max:g} | {sampler} | {steps} | {(u == 255).float().mean().item():.2%} | "
                  f"{(u == 0).float().mean().item():.2%} |", flush=True)


if __name__ == "__main__":
    main()
