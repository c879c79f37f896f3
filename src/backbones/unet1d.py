"""A 1D U-Net for sequences ``(B, C, L)``: the backbone of latent audio (a waveform autoencoder's latents).

Written here because MONAI's DiffusionModelUNet fails at ``spatial_dims=1`` (its time embedding is broadcast
to two spatial axes; checked with MONAI 1.6.1) and diffusers' UNet1DModel has no class embedding.
Layout as in DDPM / MONAI: residual blocks with GroupNorm, SiLU and an added noise-level (+ class) embedding,
strided-conv downsampling, nearest upsampling + conv, skip connections by concatenation, and self-attention
on the coarsest levels. Any length works: the input is zero-padded to the levels' multiple and cropped back.

Text (``cond=text``, ``context_dim > 0``) as in DiffWave and MONAI's conditioned U-Net: the pooled caption
embedding is projected into the noise-level embedding (``text_pool``), and every level with self-attention and
the middle block add cross-attention from the sequence to the per-token embeddings (``CrossAttention1d``,
zero-initialised, so it starts as the identity). ``context_dim=0`` builds exactly the network without text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import ConfigError
from src.registry import check_keys

from .diffwave import CrossAttention1d, NoiseEmbedding

# channels per level, residual blocks per level, attention per level, group-norm groups
PRESETS_1D: dict[str, dict] = {
    "tiny": dict(channels=(32, 64), num_res_blocks=1, attention_levels=(False, True), norm_num_groups=8),
    "small": dict(channels=(64, 128, 128), num_res_blocks=1, attention_levels=(False, False, True),
                  norm_num_groups=16),
    "base": dict(channels=(96, 192, 192), num_res_blocks=2, attention_levels=(False, True, True),
                 norm_num_groups=32),
    "large": dict(channels=(128, 256, 256, 384), num_res_blocks=2, attention_levels=(False, True, True, True),
                  norm_num_groups=32),
}


class ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(embed_dim, 2 * c_out)  # scale and shift (FiLM), as in improved DDPM
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[..., None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention1d(nn.Module):
    def __init__(self, channels: int, groups: int, head_channels: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.attn = nn.MultiheadAttention(channels, max(1, channels // head_channels), batch_first=True)

    def forward(self, x, emb=None):
        h = self.norm(x).transpose(1, 2)
        return x + self.attn(h, h, h, need_weights=False)[0].transpose(1, 2)


class UNet1d(nn.Module):
    def __init__(self, in_channels: int = 8, out_channels: int | None = None, channels=(64, 128, 128),
                 num_res_blocks: int = 1, attention_levels=(False, False, True), norm_num_groups: int = 16,
                 embed_dim: int | None = None, num_classes: int = 0, noise_scale: float = 1000.0,
                 context_dim: int = 0):
        super().__init__()
        channels, attention_levels = list(channels), list(attention_levels)
        if len(attention_levels) != len(channels):
            raise ConfigError(f"backbone.attention_levels needs one entry per level of backbone.channels "
                              f"({len(channels)}), got {len(attention_levels)}.")
        self.levels = len(channels)
        self.size_multiple = 1  # padded inside: any length
        emb = int(embed_dim or 4 * channels[0])
        self.embed = NoiseEmbedding(emb, noise_scale)
        # class labels join the noise embedding (num_classes + 1 entries, the last the null label)
        self.class_embed = nn.Embedding(num_classes + 1, emb) if num_classes else None
        # text (cond=text): the pooled embedding joins the noise embedding; levels with self-attention and the
        # middle block also attend to the per-token embeddings (a third entry of their blocks, mid_cross)
        ctx = int(context_dim or 0)
        self.text_pool = nn.Linear(ctx, emb) if ctx else None
        g = int(norm_num_groups)

        def attention(c: int, on: bool) -> list[nn.Module]:
            if not on:
                return [nn.Identity()]
            return [Attention1d(c, g), CrossAttention1d(c, ctx)] if ctx else [Attention1d(c, g)]

        self.input = nn.Conv1d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels[0]]
        prev = channels[0]
        for i, c in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock1d(prev, c, emb, g), *attention(c, attention_levels[i])]))
                prev = c
                skips.append(c)
            if i < self.levels - 1:
                self.down.append(nn.Conv1d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock1d(prev, prev, emb, g), Attention1d(prev, g), ResBlock1d(prev, prev, emb, g)])
        self.mid_cross = CrossAttention1d(prev, ctx) if ctx else None
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(channels))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock1d(prev + skips.pop(), c, emb, g),
                                              *attention(c, attention_levels[i])]))
                prev = c
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv1d(c, c, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(min(g, prev), prev), nn.SiLU(),
                                 nn.Conv1d(prev, out_channels or in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None,
                label: torch.Tensor | None = None, context: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None):
        if x.ndim != 3:
            raise ValueError(f"The unet1d backbone takes sequences shaped (B, C, L), got {tuple(x.shape)}.")
        if cond is not None:
            raise ConfigError("The unet1d backbone takes no `cond` tensor (mel conditioning is for diffwave); drop "
                              "datamodule.mel_conditioning for latent audio.")
        length = x.shape[-1]
        m = 2 ** (self.levels - 1)
        h = F.pad(x, (0, (-length) % m))
        emb = self.embed(noise_level.reshape(-1).expand(x.shape[0]))
        if label is not None:
            if self.class_embed is None:
                raise ValueError("This unet1d backbone was built without classes but got labels; set cond=class.")
            emb = emb + self.class_embed(label)
        if context is not None:
            if self.text_pool is None:
                raise ValueError("This unet1d backbone was built without text but got text; set cond=text.")
            emb = emb + self.text_pool(pooled.to(emb.dtype))
        h = self.input(h)
        hs = [h]
        for block in self.down:
            if isinstance(block, nn.ModuleList):
                h = self._attend(block, block[0](h, emb), context)
            else:
                h = block(h)
            hs.append(h)
        h = self.mid[1](self.mid[0](h, emb))
        if context is not None:
            h = self.mid_cross(h, context)
        h = self.mid[2](h, emb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = self._attend(block, block[0](torch.cat([h, hs.pop()], dim=1), emb), context)
            else:
                h = block(h)
        return self.out(h)[..., :length]

    @staticmethod
    def _attend(block: nn.ModuleList, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """A block's self-attention (or identity), then its cross-attention to the text when it has one."""
        h = block[1](h)
        if context is not None and len(block) > 2:
            h = block[2](h, context)
        return h


def build_unet1d(in_channels: int = 8, out_channels: int | None = None, preset: str = "small", num_classes: int = 0,
                 context_dim: int = 0, **overrides) -> nn.Module:
    if preset not in PRESETS_1D:
        raise ConfigError(f"Unknown backbone.preset '{preset}'; choose one of {', '.join(PRESETS_1D)}.")
    check_keys(UNet1d, overrides, "backbone", "backbone.name=unet1d")
    kwargs = {**PRESETS_1D[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return UNet1d(in_channels=in_channels, out_channels=out_channels, num_classes=int(num_classes),
                  context_dim=int(context_dim), **kwargs)
