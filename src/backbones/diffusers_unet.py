"""diffusers' UNet2DModel behind the backbone call (diffusers is imported only when this backbone is built).

Used to compare pipelines on one network: the same UNet2DModel trained by this framework and by a
diffusers-style loop (benchmarks/train_throughput.py).
"""

from __future__ import annotations

import torch
from torch import nn

from src.errors import ConfigError


class DiffusersUNetBackbone(nn.Module):
    def __init__(self, net: nn.Module, noise_scale: float = 1000.0):
        super().__init__()
        self.net, self.noise_scale = net, noise_scale
        self.size_multiple = 2 ** (len(net.down_blocks) - 1)  # the last down block keeps its size

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None):
        return self.net(x, noise_level * self.noise_scale).sample


def build_diffusers_unet2d(in_channels: int = 3, sample_size: int = 32, block_out_channels=(64, 128, 128),
                           attention_levels=(False, False, True), layers_per_block: int = 1,
                           norm_num_groups: int = 32, out_channels: int | None = None) -> nn.Module:
    try:
        from diffusers import UNet2DModel  # optional heavy dependency: diffusers (slow to import, only this backbone)
    except ImportError:
        raise ConfigError("backbone diffusers_unet2d needs diffusers: run bash scripts/setup.sh.") from None
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    net = UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels or in_channels,
                      layers_per_block=layers_per_block, block_out_channels=tuple(block_out_channels),
                      down_block_types=down, up_block_types=up, norm_num_groups=norm_num_groups)
    return DiffusersUNetBackbone(net)
