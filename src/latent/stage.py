"""Which LightningModule a run trains: ``stage=autoencoder`` (stage 1), ``latent.autoencoder=PATH`` (stage 2,
diffusion in that autoencoder's latent space), ``latent.autoencoder=mel`` (audio: diffusion of fixed log-mel
spectrograms, src/latent/mel.py) or plain pixel-space diffusion; and which module class a checkpoint
rebuilds."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from src.backbones.unet import PRESETS as UNET_PRESETS
from src.checkpoint import CheckpointError, load_checkpoint
from src.distill.student import LatentStudentModule, StudentModule
from src.errors import ConfigError
from src.module import DiffusionModule

from .autoencoder import AutoencoderModule
from .diffusion import LatentDiffusionModule
from .space import read_autoencoder

log = logging.getLogger(__name__)

MEL = "mel"  # the reserved value of latent.autoencoder: log-mel spectrograms instead of a trained autoencoder


def stage_name(cfg) -> str:
    return str((cfg.get("stage") or {}).get("name") or "diffusion")


def is_distill(cfg) -> bool:
    return stage_name(cfg) == "distill"


def is_autoencoder(cfg) -> bool:
    return stage_name(cfg) == "autoencoder"


def build_model(cfg: dict, data_shape: list[int], **extra):
    """The run's LightningModule from the resolved config (a plain dict, converted once by the entry point) and
    the datamodule's ``data_shape``; ``extra``: more DiffusionModule arguments (e.g. class conditioning), which
    stage 1 (an unconditional autoencoder) ignores."""
    latent = dict(cfg.get("latent") or {})
    stage = stage_name(cfg)
    if stage not in ("diffusion", "autoencoder", "distill"):
        raise ConfigError(f"Unknown stage '{stage}'; choose diffusion, autoencoder or distill.")
    if stage == "distill":
        raise ConfigError("stage=distill builds its student with src.distill.stage.build_student.")
    if stage == "autoencoder":
        if latent.get("autoencoder"):
            raise ConfigError("stage=autoencoder trains the autoencoder itself; drop latent.autoencoder=, which is "
                              "for the diffusion run that follows.")
        return AutoencoderModule(autoencoder=cfg["autoencoder"], data_shape=data_shape,
                                 loss=cfg.get("loss") or {}, discriminator=cfg.get("discriminator") or {},
                                 optim=cfg["optim"], ema=cfg["ema"], seed=cfg["seed"])
    common = dict(backbone=cfg["backbone"], diffusion=cfg["diffusion"], data_shape=data_shape,
                  optim=cfg["optim"], ema=cfg["ema"], seed=cfg["seed"], val_buckets=cfg["val_buckets"],
                  perf=cfg.get("perf") or {}, **extra)
    if not latent.get("autoencoder"):
        return DiffusionModule(**common)
    if latent["autoencoder"] == MEL:
        arch, weights, source = mel_space(cfg, data_shape)
    else:
        arch, weights, source = read_autoencoder(latent["autoencoder"], use_ema=bool(latent.get("use_ema", True)))
        check_source(cfg, latent["autoencoder"], source)
    if arch.get("layout") == "image":  # mel spectrograms as 1-channel images: the 2D U-Net
        preset = str((latent.get("mel") or {}).get("preset") or "compact")
        if preset not in UNET_PRESETS:
            raise ConfigError(f"Unknown latent.mel.preset '{preset}' (the 2D U-Net of latent.mel.layout=image); "
                              f"choose one of {', '.join(UNET_PRESETS)}.")
        common["backbone"] = {"name": "unet", "spatial_dims": 2, "preset": preset}
    elif latent.get("backbone"):  # a backbone suited to the latents (audio: a 1D U-Net in place of DiffWave)
        common["backbone"] = dict(latent["backbone"])
    model = LatentDiffusionModule(**common, latent={"arch": arch, "source": source,
                                                    "scale_factor": latent.get("scale_factor"),
                                                    "scale_batches": latent.get("scale_batches")})
    if weights is not None:
        model.latent.autoencoder.load_state_dict(weights)
        log.info("Diffusing in the latent space %s of autoencoder %s (step %d).", model.data_shape, source["file"],
                 source["step"])
    else:
        log.info("Diffusing normalised log-mel spectrograms %s (%d bands, hop %d), decoded by Griffin-Lim.",
                 model.data_shape, arch["n_mels"], arch["hop"])
    return model


def mel_space(cfg: dict, data_shape: list[int]) -> tuple[dict, None, dict]:
    """``(arch, None, source)`` of ``latent.autoencoder=mel``: the MelCodec's config from the run's datamodule
    (sample rate, channels, clip length) and ``latent.mel`` (n_mels, hop); ``source`` names a hash of the
    arch, so a run resumes only with the same mel settings."""
    domain = (cfg.get("domain") or {}).get("name")
    if domain != "audio":
        raise ConfigError(f"latent.autoencoder=mel diffuses mel spectrograms of audio clips and this run is "
                          f"domain={domain}; use domain=audio, or pass the last.ckpt of a stage=autoencoder run.")
    mel = dict((cfg.get("latent") or {}).get("mel") or {})
    rate = int(cfg["datamodule"]["sample_rate"])
    # latent.mel.layout was checked with the rest of the config (src/config_check.py); MelCodec refuses others
    layout = str(mel.get("layout") or "sequence")
    arch = {"kind": "mel", "n_mels": int(mel.get("n_mels") or 64), "hop": int(mel.get("hop") or 128),
            "sample_rate": rate, "in_channels": int(data_shape[0]), "length": int(data_shape[-1])}
    if layout != "sequence":  # checkpoints of the sequence layout keep their arch (and hash) unchanged
        arch["layout"] = layout
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()
    source = {"sha256": digest, "step": 0, "file": "mel", "use_ema": False, "data_shape": list(data_shape),
              "domain": domain, "sample_rate": rate}
    return arch, None, source


def check_source(cfg, path, source: dict) -> None:
    """Stage 2 refuses an autoencoder of another domain, or (audio) trained at another sample rate."""
    domain = (cfg.get("domain") or {}).get("name")
    theirs = source.get("domain")
    if theirs and domain and theirs != domain:
        raise ConfigError(f"latent.autoencoder={path} was trained on {theirs} data and this run is domain={domain}; "
                          f"train an autoencoder with python -m src.train stage=autoencoder domain={domain} ... and "
                          "pass its last.ckpt.")
    rate = (cfg.get("datamodule") or {}).get("sample_rate")
    if source.get("sample_rate") and rate and int(source["sample_rate"]) != int(rate):
        raise ConfigError(f"latent.autoencoder={path} was trained at {source['sample_rate']} Hz and this run's "
                          f"datamodule.sample_rate is {rate}; set datamodule.sample_rate={source['sample_rate']} or "
                          f"train an autoencoder at {rate} Hz.")


def module_class(hp: dict, path) -> type:
    """The class that rebuilds a checkpoint from its hyper_parameters (for sampling and reconstruction)."""
    if "autoencoder" in hp and "backbone" not in hp:
        raise CheckpointError(f"Checkpoint {path} is a stage=autoencoder checkpoint, which does not sample; pass it "
                              "as latent.autoencoder= to a diffusion run and sample from that run's checkpoint.")
    if hp.get("distill"):  # a few-step student (src/distill)
        return LatentStudentModule if hp.get("latent") else StudentModule
    if hp.get("latent"):
        return LatentDiffusionModule
    return DiffusionModule


def module_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the DiffusionModule from the checkpoint's own config (allow-listed builders), load weights."""
    ckpt = load_checkpoint(path)
    # training's fast paths (torch.compile, channels-last) are not inference's: compile needs a C compiler
    hp = {**ckpt["hyper_parameters"], "perf": None}
    lora = ((hp.get("finetune") or {}).get("lora") or {}).get("rank")
    if hp.get("init") and not lora:
        hp["init"] = None  # fully trained weights are all in the checkpoint; only LoRA needs its base model
    cls = module_class(hp, path)
    try:
        module = cls(**hp)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {path} describes a model this version cannot build: {e}") from None
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if lora:  # adapter-only: the frozen base was loaded from init.from (its sha256 checked) when it was built
        missing = [k for k in missing if k in module.checkpoint_state({k: None})]
    if any(k.startswith("latent.") for k in missing):
        raise CheckpointError(f"Checkpoint {path} is a latent diffusion model without its autoencoder's weights, so "
                              "its samples cannot be decoded; use a checkpoint written by src.train.")
    if missing or unexpected:
        raise CheckpointError(f"Checkpoint {path} does not match its own model config "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} keys, e.g. "
                              f"{(missing or unexpected)[:3]}).")
    module.eval().to(device)
    return module, ckpt


def require_pixel_space(module, path, tool: str) -> None:
    """Refuse latent checkpoints in tools whose measurement model needs the data itself (data consistency)."""
    if hasattr(module, "latent"):
        raise CheckpointError(f"Checkpoint {path} is a latent diffusion model; {tool} works on the data "
                              "itself (pixels, voxels or waveform samples), so it needs a checkpoint trained without "
                              "latent.autoencoder.")
