"""Denoising networks behind one call: ``backbone(x, noise_level, cond=None)``.

Backbones are built by name through this allow-list (never an arbitrary ``_target_``), so a
checkpoint's own config can rebuild its network safely.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from src.errors import ConfigError
from src.registry import Registry

from .diffusers_unet import build_diffusers_unet2d
from .diffwave import build_diffwave
from .unet import build_unet
from .unet1d import build_unet1d

BACKBONES = Registry("backbone.name", {
    "unet": build_unet,
    "diffwave": build_diffwave,
    "diffusers_unet2d": build_diffusers_unet2d,
    "unet1d": build_unet1d,
})


def register_backbone(name: str, builder: Callable[..., nn.Module]) -> None:
    BACKBONES.register(name, builder)


def build_backbone(cfg: dict) -> nn.Module:
    return BACKBONES.build(cfg)


def size_multiple(backbone: nn.Module) -> int:
    """What every spatial size of the data must be a multiple of for this backbone (1: any size).

    Backbones declare it as ``size_multiple`` (a U-Net: 2 to the number of downsamplings)."""
    return int(getattr(backbone, "size_multiple", 1))


def check_data_shape(data_shape, backbone: nn.Module, fix: str | None = None) -> None:
    """A ConfigError when a spatial size of ``data_shape`` ``(C, *spatial)`` does not fit the backbone; ``fix``:
    what to change, when it is not the data's own size (e.g. the clip length behind a spectrogram's frames)."""
    m = size_multiple(backbone)
    spatial = [int(n) for n in list(data_shape)[1:]]
    if any(n % m or n < m for n in spatial):
        fix = (fix or "change the data's size (datamodule.shape, datamodule.resolution, ...)").format(m=m)
        raise ConfigError(f"This backbone halves the data size {m.bit_length() - 1} times, so every spatial "
                          f"size must be a multiple of {m}; the data shape is {spatial}: {fix} or the "
                          "backbone's levels.")
