"""MONAI's AutoencoderKL (2D or 3D) and PatchDiscriminator with size presets, and the perceptual distance.

Presets give the channels per level; the autoencoder halves every spatial side once per level after the
first, so ``len(channels) - 1`` levels make a downsampling factor of ``2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn

from src.errors import ConfigError

from .mel import MelCodec
from .waveform import WaveformAutoencoder, hop_of, waveform_kwargs

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
    if cfg.get("spatial_dims") == 1 or cfg.get("kind") == "waveform":  # audio: the 1D waveform autoencoder
        return waveform_kwargs(cfg)
    preset = cfg.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"Unknown autoencoder.preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    dims = cfg.get("spatial_dims")
    if dims not in (2, 3):
        raise ConfigError(f"stage=autoencoder needs 1D, 2D or 3D data (domain=audio, image, or mri in either mode); "
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


def build_autoencoder(kwargs: dict) -> AutoencoderKL | WaveformAutoencoder | MelCodec:
    kw = dict(kwargs)
    if kw.get("kind") == "mel":  # latent.autoencoder=mel: fixed log-mel spectrograms, no trained weights
        return MelCodec(**{k: v for k, v in kw.items() if k != "kind"})
    if kw.get("kind") == "waveform":
        return WaveformAutoencoder(**kw)
    return AutoencoderKL(**{**kw, "channels": tuple(kw["channels"]), "attention_levels": tuple(kw["attention_levels"])})


def downsampling(kwargs: dict) -> int:
    if kwargs.get("kind") == "mel":
        return int(kwargs.get("hop", 128))
    if kwargs.get("kind") == "waveform":
        return hop_of(kwargs)
    return 2 ** (len(kwargs["channels"]) - 1)


def latent_shape(kwargs: dict, data_shape: list[int]) -> list[int]:
    """``(C, *spatial)`` of the data -> ``(latent_channels, *spatial / factor)``, or a ConfigError."""
    f = downsampling(kwargs)
    spatial = list(data_shape[1:])
    if kwargs.get("kind") == "mel":  # (channels * n_mels, frames) with centred STFT frames, or an image
        n = int(spatial[-1]) if len(spatial) == 1 else 0
        if len(spatial) != 1 or n <= 2 * f:
            raise ConfigError(f"The clips hold {n} samples (datamodule.clip_seconds x datamodule.sample_rate), too "
                              f"short for mel frames of {4 * f} samples (4 x latent.mel.hop={f}); set a longer "
                              "datamodule.clip_seconds or a smaller latent.mel.hop.")
        if kwargs.get("layout") == "image":  # (channels, n_mels, frames) for the 2D U-Net
            return [int(data_shape[0]), int(kwargs.get("n_mels", 64)), n // f]
        return [int(data_shape[0]) * int(kwargs.get("n_mels", 64)), n // f + 1]
    if kwargs.get("kind") == "waveform":
        n = int(spatial[-1]) if len(spatial) == 1 else 0
        if len(spatial) != 1 or n < f:
            raise ConfigError(f"The clips hold {n} samples (datamodule.clip_seconds x datamodule.sample_rate), "
                              f"shorter than the waveform autoencoder's hop of {f} samples; set "
                              "datamodule.clip_seconds to a longer clip (e.g. 1.024 at 16000 Hz).")
        if n % f:
            raise ConfigError(f"The clips hold {n} samples, not a whole number of the waveform autoencoder's hop of "
                              f"{f} samples; set datamodule.clip_seconds so that clip_seconds x "
                              f"datamodule.sample_rate is a multiple of {f} (e.g. 1.024 at 16000 Hz).")
        return [int(kwargs["latent_channels"]), n // f]
    if len(spatial) != kwargs["spatial_dims"] or any(s % f for s in spatial):
        raise ConfigError(f"The data's spatial shape {spatial} must be {kwargs['spatial_dims']}-D with every side a "
                          f"multiple of {f} (the autoencoder's {len(kwargs['channels'])} levels of "
                          "autoencoder.channels); change datamodule.shape / datamodule.resolution or the preset.")
    return [int(kwargs["latent_channels"]), *(s // f for s in spatial)]


def build_discriminator(spatial_dims: int, in_channels: int, channels: int = 32, num_layers: int = 3,
                        **_) -> PatchDiscriminator:
    return PatchDiscriminator(spatial_dims=spatial_dims, in_channels=in_channels, channels=int(channels),
                              num_layers_d=int(num_layers), out_channels=1)


class PerceptualDistance(nn.Module):
    """An LPIPS-style distance on the features of a local TorchScript network (no download, no learned weights).

    The network takes data-shaped batches ``(B, C, *spatial)`` in the data range [-1, 1] and returns one feature
    map ``(B, K, ...)`` or a list / tuple / dict of them. Each map is normalised to unit length over its
    channels; the distance is the squared difference summed over channels, averaged over positions and the
    batch, summed over the maps (LPIPS with unit layer weights). ``slices``: for 3D data, a 2D network applied to
    every slice along the first spatial axis (depth); otherwise the network gets the volume itself.
    """

    def __init__(self, net: torch.jit.ScriptModule, slices: bool = False):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():  # ScriptModules have no requires_grad_()
            p.requires_grad_(False)
        self.slices = bool(slices)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen feature network: always in inference mode

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.slices and x.ndim == 5:  # (B, C, D, H, W) -> (B * D, C, H, W)
            x = x.movedim(2, 1).reshape(-1, x.shape[1], *x.shape[3:])
        out = self.net(x)
        if isinstance(out, dict):
            out = list(out.values())
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for fx, fy in zip(self.features(x), self.features(y)):
            fx = fx / (fx.square().sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (fx - fy).square().sum(1).mean()
        return total


def build_perceptual(weights: str | None, data_shape: list[int], slices: bool = False) -> PerceptualDistance:
    """The perceptual distance on the TorchScript feature network at ``weights`` (loss.perceptual_network),
    checked on one zero batch of ``data_shape``; a missing, unreadable or unfitting file is a ConfigError."""
    key = "loss.perceptual_network"
    if not weights:
        raise ConfigError(f"loss.perceptual_weight > 0 needs {key}=PATH, a local TorchScript feature network "
                          "(torch.jit.save; nothing is downloaded); or set loss.perceptual_weight=0.")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={path} is not a file; pass a TorchScript feature network saved with "
                          "torch.jit.save.")
    try:
        with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated; it still loads
            warnings.filterwarnings("ignore", message=r"`torch.jit.load` is deprecated", category=FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{key}={path} cannot be loaded as a TorchScript network ({str(e).splitlines()[0]}); "
                          "save it with torch.jit.save(torch.jit.script(net), PATH).") from None
    distance = PerceptualDistance(net, slices=slices)
    probe = torch.zeros(1, *data_shape)
    try:
        with torch.no_grad():
            maps = distance.features(probe)
    except RuntimeError as e:  # the user's network does not take this data (channels, dimensions)
        raise ConfigError(f"{key}={path} fails on a batch of the data's shape {[1, *data_shape]}"
                          f"{' (as 2D slices)' if slices and len(data_shape) == 4 else ''}: "
                          f"{str(e).strip().splitlines()[-1]}; it must take (B, C, *spatial) in [-1, 1].") from None
    if not maps or any(not isinstance(m, torch.Tensor) or m.ndim < 2 for m in maps):
        raise ConfigError(f"{key}={path} must return a feature map (B, K, ...) or a list of them.")
    return distance


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (MONAI's tutorials)."""
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * (z_mu.square() + z_sigma.square() - torch.log(z_sigma.square() + 1e-12) - 1).sum(dims)
    return kl.mean()
