"""Which LightningModule a run trains: ``stage=autoencoder`` (stage 1), ``latent.autoencoder=PATH`` (stage 2,
diffusion in that autoencoder's latent space) or plain pixel-space diffusion; and which module class a
checkpoint rebuilds."""

from __future__ import annotations

import logging

from src.checkpoint import CheckpointError
from src.config import to_plain
from src.errors import ConfigError

log = logging.getLogger(__name__)


def stage_name(cfg) -> str:
    return str((cfg.get("stage") or {}).get("name") or "diffusion")


def is_autoencoder(cfg) -> bool:
    return stage_name(cfg) == "autoencoder"


def build_model(cfg, data_shape: list[int], **extra):
    """The run's LightningModule from the resolved config and the datamodule's ``data_shape``; ``extra``: more
    DiffusionModule arguments (e.g. class conditioning), which stage 1 (an unconditional autoencoder) ignores."""
    from src.module import DiffusionModule

    latent = to_plain(cfg.get("latent"))
    stage = stage_name(cfg)
    if stage not in ("diffusion", "autoencoder"):
        raise ConfigError(f"Unknown stage '{stage}'; choose diffusion or autoencoder.")
    if stage == "autoencoder":
        if latent.get("autoencoder"):
            raise ConfigError("stage=autoencoder trains the autoencoder itself; drop latent.autoencoder=, which is "
                              "for the diffusion run that follows.")
        from .autoencoder import AutoencoderModule

        return AutoencoderModule(autoencoder=to_plain(cfg.autoencoder), data_shape=data_shape,
                                 loss=to_plain(cfg.get("loss")), discriminator=to_plain(cfg.get("discriminator")),
                                 optim=to_plain(cfg.optim), ema=to_plain(cfg.ema), seed=cfg.seed)
    common = dict(backbone=to_plain(cfg.backbone), diffusion=to_plain(cfg.diffusion), data_shape=data_shape,
                  optim=to_plain(cfg.optim), ema=to_plain(cfg.ema), seed=cfg.seed, val_buckets=cfg.val_buckets,
                  perf=to_plain(cfg.get("perf")), **extra)
    if not latent.get("autoencoder"):
        return DiffusionModule(**common)
    from .diffusion import LatentDiffusionModule
    from .space import read_autoencoder

    arch, weights, source = read_autoencoder(latent["autoencoder"], use_ema=bool(latent.get("use_ema", True)))
    model = LatentDiffusionModule(**common, latent={"arch": arch, "source": source,
                                                    "scale_factor": latent.get("scale_factor"),
                                                    "scale_batches": latent.get("scale_batches")})
    model.latent.autoencoder.load_state_dict(weights)
    log.info("Diffusing in the latent space %s of autoencoder %s (step %d).", model.data_shape, source["file"],
             source["step"])
    return model


def module_class(hp: dict, path) -> type:
    """The class that rebuilds a checkpoint from its hyper_parameters (for sampling and reconstruction)."""
    if "autoencoder" in hp and "backbone" not in hp:
        raise CheckpointError(f"Checkpoint {path} is a stage=autoencoder checkpoint, which does not sample; pass it "
                              "as latent.autoencoder= to a diffusion run and sample from that run's checkpoint.")
    if hp.get("latent"):
        from .diffusion import LatentDiffusionModule

        return LatentDiffusionModule
    from src.module import DiffusionModule

    return DiffusionModule


def require_pixel_space(module, path, tool: str) -> None:
    """Refuse latent checkpoints in tools whose measurement model needs the data itself (data consistency)."""
    if hasattr(module, "latent"):
        raise CheckpointError(f"Checkpoint {path} is a latent diffusion model; {tool} enforces data consistency in "
                              "pixel (voxel) space, so it needs a pixel-space checkpoint (trained without "
                              "latent.autoencoder).")
