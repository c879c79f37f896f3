"""diffusers' UNet2DModel / UNet2DConditionModel behind the backbone call (diffusers is imported only when
this backbone is built).

Built from keyword arguments (benchmarks/train_throughput.py compares pipelines on one network) or from a
diffusers ``config.json`` (``init.from=FOLDER``: a pretrained model used as the backbone).
"""

from __future__ import annotations

import torch
from torch import nn

from src.errors import ConfigError

CLASSES = ("UNet2DModel", "UNet2DConditionModel")


class DiffusersUNetBackbone(nn.Module):
    def __init__(self, net: nn.Module, noise_scale: float = 1000.0):
        super().__init__()
        self.net, self.noise_scale = net, noise_scale
        self.size_multiple = 2 ** (len(net.down_blocks) - 1)  # the last down block keeps its size
        # UNet2DConditionModel always cross-attends: without per-token embeddings it gets one zero token
        self.context_dim = net.config.cross_attention_dim if type(net).__name__ == "UNet2DConditionModel" else None

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None,
                label: torch.Tensor | None = None):
        t = noise_level * self.noise_scale
        if self.context_dim is None:
            return self.net(x, t, class_labels=label).sample
        if cond is None or cond.ndim != 3:
            cond = x.new_zeros(x.shape[0], 1, int(self.context_dim))
        return self.net(x, t, encoder_hidden_states=cond, class_labels=label).sample


def build_diffusers_unet2d(in_channels: int = 3, sample_size: int = 32, block_out_channels=(64, 128, 128),
                           attention_levels=(False, False, True), layers_per_block: int = 1,
                           norm_num_groups: int = 32, out_channels: int | None = None,
                           class_name: str = "UNet2DModel", config: dict | None = None,
                           num_classes: int = 0) -> nn.Module:
    """``config``: a diffusers ``config.json`` (its ``in_channels`` / ``out_channels`` replaced by the run's);
    otherwise a UNet2DModel from the other arguments."""
    try:
        import diffusers  # optional heavy dependency: diffusers (slow to import, only this backbone)
    except ImportError:
        raise ConfigError("backbone diffusers_unet2d needs diffusers: run bash scripts/setup.sh.") from None
    if class_name not in CLASSES:
        raise ConfigError(f"backbone.class_name '{class_name}' is not supported; use one of {', '.join(CLASSES)}.")
    cls = getattr(diffusers, class_name)
    if config is not None:
        config = {**config, "in_channels": in_channels, "out_channels": out_channels or in_channels}
        if num_classes:
            config["num_class_embeds"] = int(num_classes) + 1
        return DiffusersUNetBackbone(cls.from_config(config))
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    net = cls(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels or in_channels,
              layers_per_block=layers_per_block, block_out_channels=tuple(block_out_channels),
              down_block_types=down, up_block_types=up, norm_num_groups=norm_num_groups,
              num_class_embeds=int(num_classes) + 1 if num_classes else None)
    return DiffusersUNetBackbone(net)
