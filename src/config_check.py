"""The numeric keys of the training config and what each accepts, checked once right after Hydra composes the
config, before the run folder exists (``CheckOptions``, a Hydra callback named in ``configs/train.yaml``) and
again at the top of ``src.train.train`` for configs composed in Python.

``RANGES`` is the one table: a key absent from a config (another domain's, another stage's) is skipped.
Besides it, every float anywhere in the config must be finite and every whole number must fit in 64 bits.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import register_resolvers
from .errors import ConfigError, ProjectError
from .options import COUNT, EXIT_BAD_INPUT, FRACTION, INT64_MAX, SEED, Number, Whole, check_output_folder

WHOLE_OR_FRACTION = "whole-or-fraction"  # Lightning's limits: a count of batches, or a share of them in [0, 1]
POSITIVE = Number(0.0, low_open=True)
NONNEGATIVE = Number(0.0)
COUNT_OR_NONE = Whole(1, none_ok=True)

RANGES: dict[str, object] = {
    "seed": SEED,
    # Lightning Trainer (configs/trainer/default.yaml)
    "trainer.max_steps": Whole(-1, note="(-1: no limit)"),
    "trainer.min_steps": Whole(0, none_ok=True),
    "trainer.max_epochs": Whole(-1, none_ok=True, note="(-1: no limit)"),
    "trainer.min_epochs": Whole(0, none_ok=True),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_nodes": COUNT,
    "trainer.check_val_every_n_epoch": COUNT_OR_NONE,
    "trainer.num_sanity_val_steps": Whole(-1, none_ok=True, note="(-1: all)"),
    "trainer.gradient_clip_val": Number(0.0, none_ok=True),
    "trainer.val_check_interval": WHOLE_OR_FRACTION,
    "trainer.limit_val_batches": WHOLE_OR_FRACTION,
    "trainer.limit_train_batches": WHOLE_OR_FRACTION,
    "trainer.overfit_batches": WHOLE_OR_FRACTION,
    # optimisation and EMA
    "optim.lr": POSITIVE,
    "optim.weight_decay": NONNEGATIVE,
    "optim.warmup_steps": Whole(0),
    "optim.min_lr_ratio": FRACTION,
    "optim.total_steps": COUNT_OR_NONE,
    "optim.nonfinite_max_skips": Whole(0),
    "optim.grad_clip": Number(0.0, none_ok=True),
    "ema.decay": FRACTION,
    "ema.inv_gamma": POSITIVE,
    "ema.power": POSITIVE,
    "ema.phema.snapshot_every": COUNT,
    # previews, checkpoints, validation
    "sampling.every_n_steps": Whole(0, note="(0: no previews)"),
    "sampling.num": Whole(0),
    "sampling.steps": COUNT_OR_NONE,
    "sampling.batch_size": COUNT_OR_NONE,
    "checkpoint.every_n_steps": Whole(0, note="(0: last.ckpt only)"),
    "checkpoint.keep": Whole(-1, note="(-1: keep all)"),
    "checkpoint.signal_check_every_n_steps": COUNT,
    "val_buckets": COUNT,
    # data
    "datamodule.batch_size": COUNT,
    "datamodule.num_workers": Whole(0),
    "datamodule.val_fraction": Number(0.0, 1.0, high_open=True),
    "datamodule.max_bad_fraction": FRACTION,
    "datamodule.builtin_size": COUNT_OR_NONE,
    "datamodule.channels": COUNT,
    "datamodule.sample_rate": COUNT,
    "datamodule.clip_seconds": POSITIVE,
    "datamodule.peak_level": Number(0.0, 1.0, low_open=True),
    "datamodule.n_mels": COUNT,
    "datamodule.hop_length": COUNT,
    "datamodule.intensity_percentile": Number(0.0, 100.0, low_open=True),
    "datamodule.foreground_threshold": FRACTION,
    "datamodule.foreground_margin": Whole(0),
    "datamodule.min_slice_foreground": FRACTION,
    "datamodule.crop_margin": NONNEGATIVE,
    "datamodule.cache_workers": Whole(0),
    "datamodule.shards.chunk_shards": COUNT,
    "datamodule.shards.shuffle_buffer": Whole(0),
    # diffusion
    "diffusion.num_timesteps": COUNT,
    "diffusion.steps": COUNT,
    "diffusion.min_snr_gamma": Number(0.0, low_open=True, none_ok=True),
    "diffusion.sigma_data": POSITIVE,
    "diffusion.sigma_min": POSITIVE,
    "diffusion.sigma_max": POSITIVE,
    "diffusion.rho": POSITIVE,
    "diffusion.p_std": POSITIVE,
    # conditioning, latent stage, autoencoder losses
    "cond.num_classes": COUNT_OR_NONE,
    "cond.drop_prob": FRACTION,
    "latent.scale_factor": Number(0.0, low_open=True, none_ok=True),
    "latent.scale_batches": COUNT,
    "latent.mel.n_mels": COUNT,
    "latent.mel.hop": COUNT,
    "loss.l1_weight": NONNEGATIVE,
    "loss.kl_weight": NONNEGATIVE,
    "loss.adversarial_weight": NONNEGATIVE,
    "loss.adversarial_warmup_steps": Whole(0),
    "loss.perceptual_weight": NONNEGATIVE,
}

_MISSING = object()


def _select(plain: dict, key: str):
    node = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _check_limit(value, key: str) -> None:
    """Lightning's batch limits and intervals: a whole number of batches (at least 0) or a share in [0, 1]."""
    if value is None:
        return
    if isinstance(value, int) and not isinstance(value, bool):
        Whole(1 if key.endswith("val_check_interval") else 0).check(value, key)
    elif isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0:
        return
    else:
        raise ConfigError(f"{key} must be a whole number of batches (at least 0) or a share between 0.0 and 1.0, "
                          f"got {value!r}.")


def _walk(node, key: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, node


def check_config(plain: dict) -> None:
    """Every declared numeric key in its range, every float finite, every whole number within 64 bits; the
    first problem is a ``ConfigError`` naming the key and what it accepts."""
    for key, kind in RANGES.items():
        value = _select(plain, key)
        if value is _MISSING:
            continue
        if kind == WHOLE_OR_FRACTION:
            _check_limit(value, key)
        else:
            kind.check(value, key)
    for key, value in _walk(plain):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}.")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise ConfigError(f"{key} must be a whole number within 64 bits (at most {INT64_MAX}), got {value!r}.")
    betas = _select(plain, "optim.betas")
    if betas is not _MISSING and (not isinstance(betas, list) or len(betas) != 2):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}.")
    if betas is not _MISSING:
        for i, b in enumerate(betas):
            Number(0.0, 1.0, high_open=True).check(b, f"optim.betas[{i}]")
    layout = _select(plain, "latent.mel.layout")
    if layout is not _MISSING and layout not in (None, "sequence", "image"):
        raise ConfigError(f"latent.mel.layout={layout} is not a layout; choose sequence (n_mels channels for the "
                          "1D U-Net) or image (a spectrogram image for the 2D U-Net).")
    std = _select(plain, "ema.phema.std")
    if std is not _MISSING and std is not None:
        for i, s in enumerate(std if isinstance(std, list) else [std]):
            Number(0.0, 0.28, low_open=True, high_open=True).check(s, f"ema.phema.std[{i}]")


def run_part(cfg: DictConfig) -> dict | None:
    """The run's own config (without ``hydra``), resolved, as plain containers; None when it does not resolve
    (the run itself then reports the broken interpolation)."""
    register_resolvers()
    keys = [k for k in cfg if k != "hydra"]
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException:
        return None


def check_run(cfg: DictConfig | dict) -> dict:
    """``check_config`` and a writable ``paths.output_dir`` (nothing created); returns the plain config."""
    plain = run_part(cfg) if isinstance(cfg, DictConfig) else cfg
    if plain is None:
        return {}
    check_config(plain)
    out = (plain.get("paths") or {}).get("output_dir")
    if out:
        check_output_folder(Path(out).expanduser(), "paths.output_dir=")
    return plain


class CheckOptions(Callback):
    """Hydra callback: the composed config checked before Hydra creates the run folder; a bad value is one
    line and exit status 2, and no folder is made."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_run(config)
        except ProjectError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
