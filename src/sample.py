"""Draw samples from a trained checkpoint.

    python -m src.sample ckpt=PATH num_samples=N [sampler=dpmpp_2m steps=32 seed=0 ema=true device=cpu] out=DIR
    python -m src.sample ckpt=PATH label=3|all guidance=2.0 num_samples=N out=DIR   (class-conditional models)

Writes N files in the format of the checkpoint's domain (its media writer) under DIR. A domain may add
options of its own (``DOMAIN.sample_options``), e.g. the audio domain's ``mel_from=FILE.wav``, which makes
a vocoder checkpoint resynthesise the whole file from its log-mel spectrogram.
A class-conditional checkpoint (trained with cond=class) takes ``label=N`` (N samples of class N) or
``label=all`` (N samples of every class, files ``PREFIX_cKKK_*``, and ``PREFIX_grid.png`` with one row per
class: images, or spectrograms for audio); ``guidance=W`` is the classifier-free guidance weight (1: none,
0: unconditional).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from .checkpoint import CheckpointError
from .config import expand_home, to_plain
from .domains import all_domains, build_media, get_domain
from .env_check import resolve_device
from .errors import ConfigError, ProjectError, positive_int, writable_folder
from .latent.stage import module_from_checkpoint
from .runtime.progress import MODES, Progress

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
    "label": None,        # class-conditional checkpoints: a class index, or all (one row per class)
    "guidance": 1.0,      # classifier-free guidance weight: 1 plain conditional, 0 unconditional, >1 stronger
    "progress": "auto",   # auto: a bar with ETA on a terminal, else a line every progress_every s | bar | lines | off
    "progress_every": 30.0,
}

USAGE = ("usage: python -m src.sample ckpt=PATH num_samples=N out=DIR "
         "[sampler=NAME steps=K seed=S ema=true device=cpu label=N|all guidance=W progress=auto|bar|lines|off] "
         "[options of the checkpoint's domain]")


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
    positive_int(cfg["num_samples"], "num_samples")
    positive_int(cfg["batch_size"], "batch_size")
    if cfg["steps"] is not None:  # steps=0 would fall back to the model's default without a word
        positive_int(cfg["steps"], "steps")
    if isinstance(cfg["guidance"], bool) or not isinstance(cfg["guidance"], (int, float)) or cfg["guidance"] < 0:
        raise ConfigError("guidance must be a number >= 0 (1: no guidance, 0: unconditional); "
                          f"got {cfg['guidance']!r}.")
    label = cfg["label"]
    if label is not None and label != "all" and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise ConfigError(f"label must be a class index (0, 1, ...) or all; got {label!r}.")
    if isinstance(cfg["progress"], bool):  # YAML reads progress=off as false (and on as true)
        cfg["progress"] = "off" if cfg["progress"] is False else "auto"
    if cfg["progress"] not in MODES:
        raise ConfigError(f"progress must be one of {', '.join(MODES)}; got {cfg['progress']!r}.")
    every = cfg["progress_every"]
    if isinstance(every, bool) or not isinstance(every, (int, float)) or every < 0:
        raise ConfigError(f"progress_every must be a number of seconds >= 0; got {every!r}.")
    out = Path(cfg["out"]).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is an existing file; pass a folder for the samples (it is created if "
                          "missing).")


def domain_input(cfg, domain, run_cfg: dict, num: int, device) -> tuple:
    """``(cond, shape)`` from the domain's own sampling options (``(None, None)``: unconditional, trained
    shape); an option of another domain is refused rather than ignored."""
    others = [k for k in domain_options() if k not in domain.sample_options and cfg.get(k) is not None]
    if others:
        raise ConfigError(f"{others[0]}= is an option for {domain_options()[others[0]][1]} checkpoints, and "
                          f"{cfg['ckpt']} is a '{domain.name}' model; drop {others[0]}=.")
    if domain.sample_input is None:
        return None, None
    options = {k: cfg.get(k) for k in domain.sample_options}
    return domain.load("sample_input")(options, run_cfg, num, str(device), str(cfg["ckpt"]))


def sample(cfg) -> list[Path]:
    check_options(cfg)
    device = resolve_device(cfg["device"], key="device=")
    module, ckpt = module_from_checkpoint(cfg["ckpt"], device=device)
    run_cfg = ckpt.get("run_config") or {}
    if "media" not in run_cfg:
        raise CheckpointError(f"Checkpoint {cfg['ckpt']} has no run_config.media; it was not written by "
                              "src.train.")
    media = build_media(run_cfg["media"])
    # media.kind names the domain (older checkpoints may lack domain.name)
    domain = get_domain((run_cfg.get("domain") or {}).get("name") or run_cfg["media"].get("kind"))
    cond, shape = domain_input(cfg, domain, run_cfg, int(cfg["num_samples"]), device)
    seed = int(cfg["seed"]) if cfg["seed"] is not None else random.SystemRandom().randrange(2**31)
    writable_folder(Path(cfg["out"]).expanduser(), f"out={cfg['out']}")
    t0 = time.perf_counter()
    out = Path(cfg["out"]).expanduser()
    num = int(cfg["num_samples"])
    labels = None if cfg["label"] is None else class_labels(cfg["label"], module, cfg["ckpt"])
    draws = len(labels or [None]) * -(-num // int(cfg["batch_size"]))  # batches of the whole command
    progress = Progress(draws * module.sampling_steps(cfg["steps"]),
                        desc=f"sampling {num * len(labels or [None])} samples", mode=cfg["progress"],
                        every=float(cfg["progress_every"]))
    kwargs = dict(sampler=cfg["sampler"], steps=cfg["steps"], seed=seed, use_ema=bool(cfg["ema"]),
                  batch_size=int(cfg["batch_size"]), shape=shape, guidance=float(cfg["guidance"]), progress=progress)
    if labels is None:
        if module.num_classes and float(cfg["guidance"]) != 1.0:
            print("note: guidance= acts only with label=; drawing unconditional samples")
        x = module.sample(num, cond=cond, **kwargs)
        paths = media.save(x, out, prefix=cfg["prefix"])
    else:
        paths, rows = [], []
        for c in labels:
            x = module.sample(num, cond=cond, label=torch.full((num,), c), **kwargs)
            paths += media.save(x, out, prefix=f"{cfg['prefix']}_c{c:03d}")
            rows.append(x)
        if len(labels) > 1 and hasattr(media, "save_grid"):  # media that can show a row per class
            media.save_grid(torch.cat(rows), num, out / f"{cfg['prefix']}_grid.png")
        names = module.cond_cfg.get("classes") or []
        print("classes: " + ", ".join(f"{c}={names[c] if c < len(names) else c}" for c in labels))
    progress.close()
    print(f"wrote {len(paths)} samples to {cfg['out']} in {time.perf_counter() - t0:.1f}s (seed={seed}; pass "
          f"seed={seed} to draw the same ones again)")
    return paths


def class_labels(label, module, ckpt) -> list[int]:
    """``label=N`` or ``label=all`` as the list of class indices to draw, checked against the checkpoint."""
    n = module.num_classes
    if not n:
        raise ConfigError(f"label= needs a class-conditional checkpoint (trained with cond=class); {ckpt} is "
                          "unconditional: drop label= and guidance=.")
    if label == "all":
        return list(range(n))
    if label >= n:
        raise ConfigError(f"label={label} is not a class of {ckpt}, which has {n} (0..{n - 1}).")
    return [int(label)]


def main(argv: list[str] | None = None) -> None:
    # the options checked against the known keys (OmegaConf), then converted once: the parts get a plain dict
    cfg = to_plain(parse_args(expand_home(sys.argv[1:] if argv is None else argv)))
    try:
        sample(cfg)
    except ProjectError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
