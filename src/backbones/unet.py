"""MONAI's DiffusionModelUNet (2D or 3D) behind the backbone call, with size presets per dimensionality."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from src.errors import ConfigError
from src.registry import check_keys

# channels per level, attention per level, residual blocks per level, head channels
PRESETS: dict[str, dict] = {
    "tiny": dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8,
                 num_head_channels=16),
    "small": dict(channels=(64, 128, 128), attention_levels=(False, False, True), num_res_blocks=1,
                  norm_num_groups=32, num_head_channels=32),
    # four levels, no attention but MONAI's middle block (on 1/8 of the side): a wide receptive field for
    # little compute; on 128x96 slices about 8x faster to train than "tiny", whose middle-block attention
    # runs on (H/2)x(W/2) tokens (docs/studies/reconstruction.md, "Prior")
    "compact": dict(channels=(16, 32, 64, 64), attention_levels=(False, False, False, False), num_res_blocks=1,
                    norm_num_groups=8, num_head_channels=16),
    "base": dict(channels=(128, 256, 256, 512), attention_levels=(False, False, True, True), num_res_blocks=2,
                 norm_num_groups=32, num_head_channels=64),
    "large": dict(channels=(192, 384, 576, 768), attention_levels=(False, True, True, True), num_res_blocks=3,
                  norm_num_groups=32, num_head_channels=64),
}


# 3D: one more level and fewer channels, so MONAI's middle-block self-attention (always present) runs on
# (D/4)^3 or (D/8)^3 tokens instead of (D/2)^3: at 32^3 that is 512 instead of 4,096 tokens per volume
PRESETS_3D: dict[str, dict] = {
    "tiny": dict(channels=(8, 16, 32), attention_levels=(False, False, False), num_res_blocks=1,
                 norm_num_groups=8, num_head_channels=8),
    "small": dict(channels=(32, 64, 128), attention_levels=(False, False, False), num_res_blocks=1,
                  norm_num_groups=16, num_head_channels=32),
    "compact": dict(channels=(8, 16, 32, 32), attention_levels=(False, False, False, False), num_res_blocks=1,
                    norm_num_groups=8, num_head_channels=8),
    "base": dict(channels=(64, 128, 256, 256), attention_levels=(False, False, False, True), num_res_blocks=2,
                 norm_num_groups=32, num_head_channels=64),
    "large": dict(channels=(96, 192, 384, 512), attention_levels=(False, False, True, True), num_res_blocks=2,
                  norm_num_groups=32, num_head_channels=64),
}


class UNetBackbone(nn.Module):
    """Wraps ``DiffusionModelUNet``; noise levels are scaled to the ~[0, 1000] range its embedding expects."""

    def __init__(self, net: DiffusionModelUNet, noise_scale: float = 1000.0):
        super().__init__()
        self.net = net
        self.noise_scale = noise_scale
        # spatial sizes must divide by 2 per downsampling (the last level keeps its size)
        self.size_multiple = 2 ** (len(net.down_blocks) - 1)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None,
                label: torch.Tensor | None = None, context: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None):
        # class labels go through MONAI's own class embedding (num_class_embeds), added to the time embedding;
        # text: per-token embeddings are the cross-attention context, the pooled one takes the class slot
        # (build_unet makes that embedding a linear map of it)
        if context is not None:
            return self.net(x, timesteps=noise_level * self.noise_scale, context=context, class_labels=pooled)
        return self.net(x, timesteps=noise_level * self.noise_scale, context=cond, class_labels=label)


def checkpoint_blocks(net: DiffusionModelUNet) -> None:
    """Recompute each down, middle and up block's activations in the backward pass (torch.utils.checkpoint).

    Trades about one extra forward pass for storing only block inputs: what lets large 3D volumes fit.
    torch's checkpoint_wrapper keeps state-dict keys unchanged, so checkpoints load either way.
    """
    net.down_blocks = nn.ModuleList([checkpoint_wrapper(b) for b in net.down_blocks])
    net.middle_block = checkpoint_wrapper(net.middle_block)
    net.up_blocks = nn.ModuleList([checkpoint_wrapper(b) for b in net.up_blocks])


def build_unet(spatial_dims: int = 2, in_channels: int = 3, out_channels: int | None = None,
               preset: str = "small", activation_checkpointing: bool = False, num_classes: int = 0,
               context_dim: int = 0, **overrides) -> nn.Module:
    """``num_classes > 0`` adds a class embedding of ``num_classes + 1`` entries; the last is the null label.
    ``context_dim > 0`` (cond=text): cross-attention to text embeddings of that width (MONAI's
    ``with_conditioning``) in every attention level and the middle block, and the pooled text embedding added
    to the time embedding through a linear map."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown backbone.preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if spatial_dims not in (2, 3):
        raise ConfigError(f"The unet backbone supports spatial_dims 2 or 3, got {spatial_dims}.")
    presets = PRESETS_3D if spatial_dims == 3 else PRESETS
    check_keys(DiffusionModelUNet, overrides, "backbone", "backbone.name=unet")
    kwargs = {**presets[preset], **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("channels", "attention_levels"):
        kwargs[key] = tuple(kwargs[key])
    if num_classes:
        kwargs["num_class_embeds"] = int(num_classes) + 1
    if context_dim:
        kwargs.update(with_conditioning=True, cross_attention_dim=int(context_dim), num_class_embeds=1)
    net = DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=in_channels,
                             out_channels=out_channels or in_channels, **kwargs)
    if context_dim:
        net.class_embedding = nn.Linear(int(context_dim), net.class_embedding.embedding_dim)
    if activation_checkpointing:
        checkpoint_blocks(net)
    return UNetBackbone(net)
