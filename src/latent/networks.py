"""MONAI's AutoencoderKL (2D or 3D) and PatchDiscriminator with size presets, and the perceptual loss.

Presets give the channels per level; the autoencoder halves every spatial side once per level after the
first, so ``len(channels) - 1`` levels make a downsampling factor of ``2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from src.errors import ConfigError

# channels per level (factor 4 each: three levels), residual blocks per level, group-norm groups
PRESETS: dict[str, dict] = {
    "tiny": dict(channels=(8, 16, 16), num_res_blocks=1, norm_num_groups=8),
    "small": dict(channels=(32, 64, 64), num_res_blocks=1, norm_num_groups=16),
    "base": dict(channels=(64, 128, 128), num_res_blocks=2, norm_num_groups=32),
    "large": dict(channels=(128, 128, 256), num_res_blocks=2, norm_num_groups=32),
}

# the keys of AutoencoderKL this project passes on (the resolved config stored in checkpoints)
ARCH_KEYS = ("spatial_dims", "in_channels", "out_channels", "channels", "num_res_blocks", "latent_channels",
             "norm_num_groups", "attention_levels", "with_encoder_nonlocal_attn", "with_decoder_nonlocal_attn",
             "use_flash_attention")


def autoencoder_kwargs(cfg: dict) -> dict:
    """The full AutoencoderKL keyword arguments for ``cfg`` (a preset plus overrides, or already resolved)."""
    cfg = {k: v for k, v in dict(cfg).items() if v is not None}
    preset = cfg.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"Unknown autoencoder.preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    dims = cfg.get("spatial_dims")
    if dims not in (2, 3):
        raise ConfigError(f"stage=autoencoder needs 2D or 3D data (domain=image, or domain=mri in either mode); "
                          f"got autoencoder.spatial_dims={dims}.")
    unknown = sorted(set(cfg) - set(ARCH_KEYS))
    if unknown:
        raise ConfigError(f"Unknown autoencoder option '{unknown[0]}'; known: preset, {', '.join(ARCH_KEYS)}.")
    kw = {**(PRESETS[preset] if preset else {}), **cfg}
    levels = len(kw["channels"])
    kw.setdefault("in_channels", 1)
    kw.setdefault("out_channels", kw["in_channels"])
    kw.setdefault("latent_channels", 3)
    kw.setdefault("attention_levels", (False,) * levels)
    # the mid-block self-attention runs on every latent voxel: affordable in 2D, not at 3D volume sizes
    kw.setdefault("with_encoder_nonlocal_attn", dims == 2)
    kw.setdefault("with_decoder_nonlocal_attn", dims == 2)
    kw.setdefault("use_flash_attention", False)
    kw["channels"], kw["attention_levels"] = list(kw["channels"]), list(kw["attention_levels"])
    if len(kw["attention_levels"]) != levels:
        raise ConfigError(f"autoencoder.attention_levels needs one entry per level of autoencoder.channels "
                          f"({levels}), got {len(kw['attention_levels'])}.")
    if any(c % kw["norm_num_groups"] for c in kw["channels"]):
        raise ConfigError(f"autoencoder.channels {kw['channels']} must all be multiples of "
                          f"autoencoder.norm_num_groups={kw['norm_num_groups']}.")
    return kw


def build_autoencoder(kwargs: dict) -> AutoencoderKL:
    kw = dict(kwargs)
    return AutoencoderKL(**{**kw, "channels": tuple(kw["channels"]), "attention_levels": tuple(kw["attention_levels"])})


def downsampling(kwargs: dict) -> int:
    return 2 ** (len(kwargs["channels"]) - 1)


def latent_shape(kwargs: dict, data_shape: list[int]) -> list[int]:
    """``(C, *spatial)`` of the data -> ``(latent_channels, *spatial / factor)``, or a ConfigError."""
    f = downsampling(kwargs)
    spatial = list(data_shape[1:])
    if len(spatial) != kwargs["spatial_dims"] or any(s % f for s in spatial):
        raise ConfigError(f"The data's spatial shape {spatial} must be {kwargs['spatial_dims']}-D with every side a "
                          f"multiple of {f} (the autoencoder's {len(kwargs['channels'])} levels of "
                          "autoencoder.channels); change datamodule.shape / datamodule.resolution or the preset.")
    return [int(kwargs["latent_channels"]), *(s // f for s in spatial)]


def build_discriminator(spatial_dims: int, in_channels: int, channels: int = 32, num_layers: int = 3,
                        **_) -> PatchDiscriminator:
    return PatchDiscriminator(spatial_dims=spatial_dims, in_channels=in_channels, channels=int(channels),
                              num_layers_d=int(num_layers), out_channels=1)


def build_perceptual(spatial_dims: int, weights: str | None):
    """MONAI's perceptual loss on a torchvision ResNet-50 read from a local file (no model hub download)."""
    if not weights:
        raise ConfigError("loss.perceptual_weight > 0 needs loss.perceptual_weights=PATH, a local torchvision "
                          "ResNet-50 state dict (nothing is downloaded); or set loss.perceptual_weight=0.")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"loss.perceptual_weights={path} is not a file; pass a local torchvision ResNet-50 "
                          "state dict.")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise ConfigError("loss.perceptual_weight > 0 needs torchvision, which is not installed; install it or set "
                          "loss.perceptual_weight=0.") from None
    from monai.losses import PerceptualLoss

    loss = PerceptualLoss(spatial_dims=spatial_dims, network_type="resnet50", is_fake_3d=spatial_dims == 3,
                          pretrained=True, pretrained_path=str(path))
    return loss.requires_grad_(False)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (MONAI's tutorials)."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * (z_mu.square() + z_sigma.square() - torch.log(z_sigma.square() + 1e-12) - 1).sum(dims)
    return kl.mean()
