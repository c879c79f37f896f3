"""MONAI's DiffusionModelUNet (2D or 3D) behind the backbone call, with size presets."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

# channels per level, attention per level, residual blocks per level, head channels
PRESETS: dict[str, dict] = {
    "tiny": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
                 num_head_channels=16),
    "small": dict(channels=(64, 128, 128), attention_levels=(False, False, True), num_res_blocks=1,
                  norm_num_groups=32, num_head_channels=32),
    "base": dict(channels=(128, 256, 256, 512), attention_levels=(False, False, True, True), num_res_blocks=2,
                 norm_num_groups=32, num_head_channels=64),
    "large": dict(channels=(192, 384, 576, 768), attention_levels=(False, True, True, True), num_res_blocks=3,
                  norm_num_groups=32, num_head_channels=64),
}


class UNetBackbone(nn.Module):
    """Wraps ``DiffusionModelUNet``; the noise level is scaled to the ~[0, 1000] range its embedding expects."""

    def __init__(self, net: DiffusionModelUNet, noise_scale: float = 1000.0):
        super().__init__()
        self.net = net
        self.noise_scale = noise_scale

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None):
        return self.net(x, timesteps=noise_level * self.noise_scale, context=cond)


def build_unet(spatial_dims: int = 2, in_channels: int = 3, out_channels: int | None = None,
               preset: str = "small", **overrides) -> nn.Module:
    if preset not in PRESETS:
        raise ValueError(f"Unknown backbone.preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"The unet backbone supports spatial_dims 2 or 3, got {spatial_dims}.")
    kwargs = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("channels", "attention_levels"):
        kwargs[key] = tuple(kwargs[key])
    net = DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=in_channels,
                             out_channels=out_channels or in_channels, **kwargs)
    return UNetBackbone(net)
