"""Draw samples from a trained checkpoint.

    python -m src.sample ckpt=PATH num_samples=N [sampler=heun steps=32 seed=0 ema=true device=cpu] out=DIR

Writes N files in the domain's format (PNG for images, WAV for audio, NIfTI for MRI) under DIR.
For an audio vocoder checkpoint (trained with datamodule.mel_conditioning=true), ``mel_from=FILE.wav``
resynthesises the whole file from its log-mel spectrogram: N renditions, each as long as the file.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from .checkpoint import CheckpointError, module_from_checkpoint
from .config import expand_home
from .errors import ConfigError, ProjectError, positive_int, writable_folder
from .media import build_media

DEFAULTS = {
    "ckpt": None,
    "num_samples": 16,
    "sampler": None,      # null: the sampler the model was trained with (diffusion.sampler)
    "steps": None,        # null: diffusion.steps
    "seed": None,         # null: a fresh random seed (printed); training previews use the run's seed
    "out": None,
    "batch_size": 16,
    "ema": True,
    "device": "auto",
    "prefix": "sample",
    "mel_from": None,     # audio vocoder checkpoints: resynthesise this file from its log-mel
}

USAGE = ("usage: python -m src.sample ckpt=PATH num_samples=N out=DIR "
         "[sampler=NAME steps=K seed=S ema=true device=cpu mel_from=FILE.wav]")


def parse_args(argv: list[str]):
    if any(a in ("-h", "--help", "help") for a in argv):
        print(f"{USAGE}\n\n{__doc__.strip()}\n\noptions and defaults: "
              + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
        raise SystemExit(0)
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


def check_options(cfg) -> None:
    """Refuse values that would otherwise fail deep inside sampling or silently mean something else."""
    positive_int(cfg.num_samples, "num_samples")
    positive_int(cfg.batch_size, "batch_size")
    if cfg.steps is not None:  # steps=0 would fall back to the model's default without a word
        positive_int(cfg.steps, "steps")
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is an existing file; pass a folder for the samples (it is created if "
                          "missing).")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def vocoder_input(cfg, run_cfg: dict, num: int, device: str):
    """``(cond, shape)`` for ``mel_from=FILE``: the file's log-mel for every sample and the file's length."""
    dm = run_cfg.get("datamodule") or {}
    vocoder = bool(dm.get("mel_conditioning"))
    if cfg.mel_from is None:
        if vocoder:
            print("note: this is a vocoder checkpoint; without mel_from=FILE.wav it samples unconditionally")
        return None, None
    if not vocoder:
        raise ConfigError(f"mel_from= needs an audio checkpoint trained with datamodule.mel_conditioning=true; "
                         f"{cfg.ckpt} was not: drop mel_from= or pass a vocoder checkpoint.")
    from datamodules.audio import mel_from_file

    mel, length = mel_from_file(cfg.mel_from, int(dm["sample_rate"]), int(dm["channels"]), dm["normalize"],
                                float(dm["peak_level"]), float(dm["target_lufs"]), int(dm["n_mels"]),
                                int(dm["hop_length"]))
    return mel.to(device).expand(num, *mel.shape), (int(dm["channels"]), length)


def sample(cfg) -> list[Path]:
    check_options(cfg)
    device = resolve_device(cfg.device)
    module, ckpt = module_from_checkpoint(cfg.ckpt, device=device)
    run_cfg = ckpt.get("run_config") or {}
    if "media" not in run_cfg:
        raise CheckpointError(f"Checkpoint {cfg.ckpt} has no run_config.media; it was not written by src.train.")
    media = build_media(run_cfg["media"])
    cond, shape = vocoder_input(cfg, run_cfg, int(cfg.num_samples), device)
    seed = int(cfg.seed) if cfg.seed is not None else random.SystemRandom().randrange(2**31)
    writable_folder(Path(cfg.out).expanduser(), f"out={cfg.out}")
    t0 = time.perf_counter()
    x = module.sample(int(cfg.num_samples), sampler=cfg.sampler, steps=cfg.steps, seed=seed,
                      use_ema=bool(cfg.ema), batch_size=int(cfg.batch_size), cond=cond, shape=shape)
    paths = media.save(x, Path(cfg.out).expanduser(), prefix=cfg.prefix)
    print(f"wrote {len(paths)} samples to {cfg.out} in {time.perf_counter() - t0:.1f}s (seed={seed}; pass "
          f"seed={seed} to draw the same ones again)")
    return paths


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(expand_home(sys.argv[1:] if argv is None else argv))
    try:
        sample(cfg)
    except ProjectError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
