"""Draw samples from a trained checkpoint.

    python -m src.sample ckpt=PATH num_samples=N [sampler=heun steps=32 seed=0 ema=true device=cpu] out=DIR

Writes N files in the domain's format (PNG for images, WAV for audio, NIfTI for MRI) under DIR.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from .checkpoint import CheckpointError, module_from_checkpoint
from .media import build_media

DEFAULTS = {
    "ckpt": None,
    "num_samples": 16,
    "sampler": None,      # null: the sampler the model was trained with (diffusion.sampler)
    "steps": None,        # null: diffusion.steps
    "seed": 0,
    "out": None,
    "batch_size": 16,
    "ema": True,
    "device": "auto",
    "prefix": "sample",
}

USAGE = "usage: python -m src.sample ckpt=PATH num_samples=N out=DIR [sampler=NAME steps=K seed=S ema=true device=cpu]"


def parse_args(argv: list[str]):
    base = OmegaConf.create(DEFAULTS)
    OmegaConf.set_struct(base, True)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"error: arguments are key=value pairs, got {bad[0]!r}\n{USAGE}")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except ConfigKeyError as e:
        key = str(e).split("\n")[0]
        raise SystemExit(f"error: unknown option ({key}); options are {', '.join(DEFAULTS)}\n{USAGE}") from None
    for key in ("ckpt", "out"):
        if not cfg[key]:
            raise SystemExit(f"error: {key}= is required\n{USAGE}")
    return cfg


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def sample(cfg) -> list[Path]:
    device = resolve_device(cfg.device)
    module, ckpt = module_from_checkpoint(cfg.ckpt, device=device)
    run_cfg = ckpt.get("run_config") or {}
    if "media" not in run_cfg:
        raise CheckpointError(f"Checkpoint {cfg.ckpt} has no run_config.media; it was not written by src.train.")
    media = build_media(run_cfg["media"])
    t0 = time.perf_counter()
    x = module.sample(int(cfg.num_samples), sampler=cfg.sampler, steps=cfg.steps, seed=int(cfg.seed),
                      use_ema=bool(cfg.ema), batch_size=int(cfg.batch_size))
    paths = media.save(x, Path(cfg.out).expanduser(), prefix=cfg.prefix)
    print(f"wrote {len(paths)} samples to {cfg.out} in {time.perf_counter() - t0:.1f}s")
    return paths


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sample(cfg)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
