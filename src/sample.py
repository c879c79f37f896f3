"""Draw samples from a trained checkpoint.

    python -m src.sample ckpt=PATH num_samples=N [sampler=heun steps=32 seed=0 ema=true device=cpu] out=DIR

Writes N files in the format of the checkpoint's domain (its media writer) under DIR. A domain may add
options of its own (``DOMAIN.sample_options``), e.g. the audio domain's ``mel_from=FILE.wav``, which makes
a vocoder checkpoint resynthesise the whole file from its log-mel spectrogram.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from .checkpoint import CheckpointError, module_from_checkpoint
from .config import expand_home
from .domains import all_domains, get_domain
from .env_check import resolve_device
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
}

USAGE = ("usage: python -m src.sample ckpt=PATH num_samples=N out=DIR "
         "[sampler=NAME steps=K seed=S ema=true device=cpu] [options of the checkpoint's domain]")


def domain_options() -> dict[str, tuple[object, str]]:
    """Each option a domain adds -> (its default, the names of the domains offering it)."""
    out: dict[str, tuple[object, str]] = {}
    for name, d in all_domains().items():
        for key, default in d.sample_options.items():
            owners = out[key][1] + ", " if key in out else ""
            out[key] = (default, owners + name)
    return out


def parse_args(argv: list[str]):
    extra = domain_options()
    if any(a in ("-h", "--help", "help") for a in argv):
        print(f"{USAGE}\n\n{__doc__.strip()}\n\noptions and defaults: "
              + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())
              + "".join(f"\n{k}={v} (for {who} checkpoints)" for k, (v, who) in extra.items()))
        raise SystemExit(0)
    options = {**DEFAULTS, **{k: v for k, (v, _) in extra.items()}}
    base = OmegaConf.create(options)
    OmegaConf.set_struct(base, True)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"error: arguments are key=value pairs, got {bad[0]!r}\n{USAGE}")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except ConfigKeyError as e:
        key = str(e).split("\n")[0]
        raise SystemExit(f"error: unknown option ({key}); options are {', '.join(options)}\n{USAGE}") from None
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


def domain_input(cfg, domain, run_cfg: dict, num: int, device) -> tuple:
    """``(cond, shape)`` from the domain's own sampling options (``(None, None)``: unconditional, trained
    shape); an option of another domain is refused rather than ignored."""
    others = [k for k in domain_options() if k not in domain.sample_options and cfg.get(k) is not None]
    if others:
        raise ConfigError(f"{others[0]}= is an option for {domain_options()[others[0]][1]} checkpoints, and "
                          f"{cfg.ckpt} is a '{domain.name}' model; drop {others[0]}=.")
    if domain.sample_input is None:
        return None, None
    options = {k: cfg.get(k) for k in domain.sample_options}
    return domain.load("sample_input")(options, run_cfg, num, str(device), str(cfg.ckpt))


def sample(cfg) -> list[Path]:
    check_options(cfg)
    device = resolve_device(cfg.device, key="device=")
    module, ckpt = module_from_checkpoint(cfg.ckpt, device=device)
    run_cfg = ckpt.get("run_config") or {}
    if "media" not in run_cfg:
        raise CheckpointError(f"Checkpoint {cfg.ckpt} has no run_config.media; it was not written by src.train.")
    media = build_media(run_cfg["media"])
    # media.kind names the domain (older checkpoints may lack domain.name)
    domain = get_domain((run_cfg.get("domain") or {}).get("name") or run_cfg["media"].get("kind"))
    cond, shape = domain_input(cfg, domain, run_cfg, int(cfg.num_samples), device)
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
