"""Denoising networks behind one call: ``backbone(x, noise_level, cond=None)``.

Backbones are built by name through this allow-list (never an arbitrary ``_target_``), so a
checkpoint's own config can rebuild its network safely.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from src.errors import ConfigError

from .diffusers_unet import build_diffusers_unet2d
from .diffwave import build_diffwave
from .unet import build_unet

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "unet": build_unet,
    "diffwave": build_diffwave,
    "diffusers_unet2d": build_diffusers_unet2d,
}


def register_backbone(name: str, builder: Callable[..., nn.Module]) -> None:
    BACKBONES[name] = builder


def build_backbone(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone.name '{name}'; choose one of {', '.join(sorted(BACKBONES))}.")
    try:
        return BACKBONES[name](**cfg)
    except TypeError as e:
        raise ConfigError(f"Bad option for backbone '{name}': {e}.") from None
