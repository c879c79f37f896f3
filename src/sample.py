"""Draw samples from a trained checkpoint.

    python -m src.sample ckpt=PATH num_samples=N [sampler=dpmpp_2m steps=32 seed=0 ema=true device=cpu] out=DIR
    python -m src.sample ckpt=PATH label=3|NAME|all guidance=2.0 num_samples=N out=DIR   (class-conditional models)
    python -m src.sample ckpt=PATH prompt="a red circle"|prompts=FILE guidance=3 num_samples=N out=DIR   (text)

Writes N files in the format of the checkpoint's domain (its media writer) under DIR. A domain may add
options of its own (``DOMAIN.sample_options``), e.g. the audio domain's ``mel_from=FILE.wav``, which makes
a vocoder checkpoint resynthesise the whole file from its log-mel spectrogram.
A class-conditional checkpoint (trained with cond=class) takes ``label=N`` (N samples of class N; ``label=NAME``
names the class by its name in the label map the checkpoint keeps) or
``label=all`` (N samples of every class, files ``PREFIX_cKKK_*``, and ``PREFIX_grid.png`` with one row per
class: images, or spectrograms for audio); ``guidance=W`` is the classifier-free guidance weight (1: none,
0: unconditional).
A text-conditional checkpoint (trained with cond=text) takes ``prompt="..."`` or ``prompts=FILE`` (one prompt per
line): N samples per prompt, files ``PREFIX_pKKK_*`` named by the prompt's index, ``prompts.txt`` beside them
(line K: prompt K) and, for several prompts, ``PREFIX_grid.png`` with one row per prompt.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from .checkpoint import CheckpointError, nonfinite_tensors
from .cli import refuse
from .config import expand_home, to_plain
from .domains import all_domains, build_media, get_domain
from .env_check import resolve_device
from .errors import ConfigError, ProjectError, positive_int, writable_folder
from .latent.stage import module_from_checkpoint
from .options import SEED, Number, check_output_folder
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
    "prompt": None,       # text-conditional checkpoints: one prompt
    "prompts": None,      # text-conditional checkpoints: a file with one prompt per line
    "progress": "auto",   # auto: a bar with ETA on a terminal, else a line every progress_every s | bar | lines | off
    "progress_every": 30.0,
}

USAGE = ("usage: python -m src.sample ckpt=PATH num_samples=N out=DIR "
         "[sampler=NAME steps=K seed=S ema=true device=cpu label=N|NAME|all prompt=TEXT|prompts=FILE guidance=W "
         "progress=auto|bar|lines|off] "
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
        refuse(f"error: arguments are key=value pairs, got {bad[0]!r}\n{USAGE}")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except ConfigKeyError as e:
        key = str(e).split("\n")[0]
        refuse(f"error: unknown option ({key}); options are {', '.join(options)}\n{USAGE}")
    for key in ("ckpt", "out"):
        if not cfg[key]:
            refuse(f"error: {key}= is required\n{USAGE}")
    return cfg


def check_options(cfg) -> None:
    """Refuse values that would otherwise fail deep inside sampling or silently mean something else."""
    positive_int(cfg["num_samples"], "num_samples")
    positive_int(cfg["batch_size"], "batch_size")
    if cfg["steps"] is not None:  # steps=0 would fall back to the model's default without a word
        positive_int(cfg["steps"], "steps")
    Number(0.0, note="(1: no guidance, 0: unconditional)").check(cfg["guidance"], "guidance")
    if cfg["seed"] is not None:
        SEED.check(cfg["seed"], "seed")
    label = cfg["label"]
    if isinstance(label, str) and not label.strip():
        raise ConfigError("label= is empty; pass a class index (0, 1, ...), a class name or all.")
    if label is not None and not isinstance(label, str) and (isinstance(label, bool) or not isinstance(label, int)
                                                             or label < 0):
        raise ConfigError(f"label must be a class index (0, 1, ...), a class name or all; got {label!r}.")
    if isinstance(cfg["progress"], bool):  # YAML reads progress=off as false (and on as true)
        cfg["progress"] = "off" if cfg["progress"] is False else "auto"
    if cfg["progress"] not in MODES:
        raise ConfigError(f"progress must be one of {', '.join(MODES)}; got {cfg['progress']!r}.")
    every = cfg["progress_every"]
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every < float("inf"):
        raise ConfigError(f"progress_every must be a number of seconds >= 0; got {every!r}.")
    read_prompts(cfg)
    out = Path(cfg["out"]).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is an existing file; pass a folder for the samples (it is created if "
                          "missing).")
    check_output_folder(out, "out=")


def read_prompts(cfg) -> list[str] | None:
    """``prompt=`` or ``prompts=FILE`` as the list of prompts to draw (None: neither), checked."""
    if cfg["prompt"] is not None and cfg["prompts"] is not None:
        raise ConfigError("Pass prompt= or prompts=FILE, not both.")
    if (cfg["prompt"] is not None or cfg["prompts"] is not None) and cfg["label"] is not None:
        raise ConfigError("label= is for class-conditional checkpoints and prompt=/prompts= for text-conditional "
                          "ones; pass one of them.")
    if cfg["prompt"] is not None:
        text = " ".join(str(cfg["prompt"]).split())
        if not text:
            raise ConfigError('prompt= is empty; give a prompt (prompt="a red circle"), or drop prompt= for '
                              "unconditional samples.")
        return [text]
    if cfg["prompts"] is None:
        return None
    path = Path(str(cfg["prompts"])).expanduser()
    if not path.is_file():
        raise ConfigError(f"prompts={path} is not a file; pass a text file with one prompt per line.")
    try:
        lines = [" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"prompts={path} cannot be read as UTF-8 text ({e}); pass a text file with one prompt "
                          "per line.") from None
    lines = [line for line in lines if line]
    if not lines:
        raise ConfigError(f"prompts={path} holds no prompt; write one prompt per line.")
    return lines


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
    bad = nonfinite_tensors(module.state_dict())
    if bad:  # such weights draw NaN, written as black images or silent audio
        raise CheckpointError(f"Checkpoint {cfg['ckpt']} holds non-finite weights ({len(bad)} tensors, e.g. "
                              f"{bad[0]}); it cannot draw samples: use an earlier checkpoint of the run.")
    run_cfg = ckpt.get("run_config") or {}
    if "media" not in run_cfg:
        raise CheckpointError(f"Checkpoint {cfg['ckpt']} has no run_config.media; it was not written by "
                              "src.train.")
    media = build_media(run_cfg["media"])
    # media.kind names the domain (older checkpoints may lack domain.name)
    domain = get_domain((run_cfg.get("domain") or {}).get("name") or run_cfg["media"].get("kind"))
    cond, shape = domain_input(cfg, domain, run_cfg, int(cfg["num_samples"]), device)
    seed = int(cfg["seed"]) if cfg["seed"] is not None else random.SystemRandom().randrange(2**31)
    # a step count or sampler the model cannot take is refused before anything is written (few-step students)
    if cfg["steps"] is not None:
        module.objective.sampling_sigmas(int(cfg["steps"]))
    if cfg["sampler"] is not None and hasattr(module, "check_sampler"):
        module.check_sampler(cfg["sampler"])
    labels = None if cfg["label"] is None else class_labels(cfg["label"], module, cfg["ckpt"])
    writable_folder(Path(cfg["out"]).expanduser(), f"out={cfg['out']}")
    t0 = time.perf_counter()
    out = Path(cfg["out"]).expanduser()
    num = int(cfg["num_samples"])
    prompts = read_prompts(cfg)
    groups = labels or prompts or [None]  # one draw of num samples per class or prompt
    draws = len(groups) * -(-num // int(cfg["batch_size"]))  # batches of the whole command
    progress = Progress(draws * module.sampling_steps(cfg["steps"]),
                        desc=f"sampling {num * len(groups)} samples", mode=cfg["progress"],
                        every=float(cfg["progress_every"]))
    kwargs = dict(sampler=cfg["sampler"], steps=cfg["steps"], seed=seed, use_ema=bool(cfg["ema"]),
                  batch_size=int(cfg["batch_size"]), shape=shape, guidance=float(cfg["guidance"]), progress=progress)
    if prompts is not None:
        paths = sample_prompts(module, media, prompts, cfg, cond, num, out, kwargs)
    elif labels is None:
        if (module.num_classes or getattr(module, "has_text", False)) and float(cfg["guidance"]) != 1.0:
            print("note: guidance= acts only with label= or prompt=; drawing unconditional samples")
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


def sample_prompts(module, media, prompts: list[str], cfg, cond, num: int, out: Path, kwargs: dict) -> list[Path]:
    """``num`` samples per prompt, files ``PREFIX_pKKK_*`` by prompt index; ``prompts.txt`` (line K: prompt K)."""
    if not getattr(module, "has_text", False):
        raise ConfigError(f"prompt= needs a text-conditional checkpoint (trained with cond=text); {cfg['ckpt']} is "
                          f"{'class-conditional: use label=' if module.num_classes else 'not: drop prompt='} "
                          "and prompts=.")
    paths, rows = [], []
    for k, prompt in enumerate(prompts):
        x = module.sample(num, cond=cond, text=[prompt] * num, **kwargs)
        paths += media.save(x, out, prefix=f"{cfg['prefix']}_p{k:03d}")
        rows.append(x)
    (out / "prompts.txt").write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
    if len(prompts) > 1 and hasattr(media, "save_grid"):  # media that can show a row per prompt
        media.save_grid(torch.cat(rows), num, out / f"{cfg['prefix']}_grid.png")
    print(f"prompts: {len(prompts)} (file index = line of {out / 'prompts.txt'})")
    return paths


def class_labels(label, module, ckpt) -> list[int]:
    """``label=N``, ``label=NAME`` (a class name the checkpoint keeps) or ``label=all`` as the list of class indices
    to draw, checked against the checkpoint."""
    n = module.num_classes
    if not n:
        raise ConfigError(f"label= needs a class-conditional checkpoint (trained with cond=class); {ckpt} is "
                          "unconditional: drop label= and guidance=.")
    if label == "all":
        return list(range(n))
    if isinstance(label, str):  # a class name: the label map the checkpoint keeps (cond.classes)
        names = [str(c) for c in ((module.hparams.get("cond") or {}).get("classes") or [])]
        if label not in names:
            known = f"its classes are {', '.join(names)}" if names else "it keeps no class names"
            raise ConfigError(f"label={label} is not a class of {ckpt}; {known} (or pass an index 0..{n - 1}).")
        return [names.index(label)]
    if label >= n:
        raise ConfigError(f"label={label} is not a class of {ckpt}, which has {n} (0..{n - 1}).")
    return [int(label)]


def main(argv: list[str] | None = None) -> None:
    # the options checked against the known keys (OmegaConf), then converted once: the parts get a plain dict
    cfg = to_plain(parse_args(expand_home(sys.argv[1:] if argv is None else argv)))
    try:
        sample(cfg)
    except ProjectError as e:
        refuse(e)


if __name__ == "__main__":
    main()
