"""DiffWave (Kong et al. 2021): dilated residual 1D convolutions for waveforms ``(B, C, L)``, with presets.

Written here because no maintained library ships DiffWave as a module. Any length ``L`` works: every
convolution keeps the length. With ``cond_channels > 0`` the network also takes a mel spectrogram
``(B, cond_channels, frames)`` as ``cond`` and becomes a vocoder; ``cond=None`` runs the unconditional path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import ConfigError
from src.registry import check_keys

# residual layers, residual channels, dilation cycle (dilations 1, 2, ..., 2^(cycle-1), repeated),
# noise-embedding width
PRESETS: dict[str, dict] = {
    "tiny": dict(residual_layers=8, residual_channels=32, dilation_cycle=8, embed_dim=128),
    "small": dict(residual_layers=16, residual_channels=48, dilation_cycle=8, embed_dim=256),
    # the DiffWave paper's BASE (2.64M parameters as a vocoder) and LARGE (6.91M)
    "base": dict(residual_layers=30, residual_channels=64, dilation_cycle=10, embed_dim=512),
    "large": dict(residual_layers=30, residual_channels=128, dilation_cycle=10, embed_dim=512),
}


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class NoiseEmbedding(nn.Module):
    """Noise level -> sinusoidal features -> two-layer MLP, as DiffWave's diffusion-step embedding."""

    def __init__(self, dim: int, noise_scale: float = 1000.0):
        super().__init__()
        self.noise_scale = noise_scale
        self.mlp = nn.Sequential(nn.Linear(128, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(noise_level * self.noise_scale, 128))


class MelUpsampler(nn.Module):
    """Smooths the mel frames, then interpolates them to the waveform length (works for any hop length)."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.conv = nn.Conv1d(n_mels, n_mels, 3, padding=1)

    def forward(self, mel: torch.Tensor, length: int) -> torch.Tensor:
        mel = F.leaky_relu(self.conv(mel), 0.4)
        return F.interpolate(mel, size=length, mode="linear", align_corners=False)


class ResidualLayer(nn.Module):
    def __init__(self, channels: int, dilation: int, embed_dim: int, cond_channels: int):
        super().__init__()
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.noise_proj = nn.Linear(embed_dim, channels)
        self.cond_proj = nn.Conv1d(cond_channels, 2 * channels, 1) if cond_channels else None
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None):
        y = self.dilated(x + self.noise_proj(emb)[..., None])
        if cond is not None and self.cond_proj is not None:
            y = y + self.cond_proj(cond)
        gate, filt = y.chunk(2, dim=1)
        y = torch.sigmoid(gate) * torch.tanh(filt)
        residual, skip = self.out(y).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class CrossAttention1d(nn.Module):
    """Each time step attends to the text tokens; zero-initialised output, so it starts as the identity."""

    def __init__(self, channels: int, context_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, max(1, channels // 16), kdim=context_dim, vdim=context_dim,
                                          batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.norm(h.transpose(1, 2))
        out, _ = self.attn(q, context.to(q.dtype), context.to(q.dtype), need_weights=False)
        return h + out.transpose(1, 2)


class DiffWave(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int | None = None, residual_layers: int = 30,
                 residual_channels: int = 64, dilation_cycle: int = 10, embed_dim: int = 512,
                 cond_channels: int = 0, noise_scale: float = 1000.0, num_classes: int = 0,
                 context_dim: int = 0, cross_attention_every: int = 4):
        super().__init__()
        self.size_multiple = 1  # fully convolutional at full resolution: any length
        c = residual_channels
        self.cond_channels = cond_channels
        # class labels join the noise embedding (num_classes + 1 entries, the last the null label)
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None
        # text (cond=text): the pooled embedding joins the noise embedding (a FiLM-like shift of every layer's
        # input), and every cross_attention_every-th layer attends to the per-token embeddings
        self.text_pool = nn.Linear(context_dim, embed_dim) if context_dim else None
        self.cross = nn.ModuleDict({str(i): CrossAttention1d(residual_channels, context_dim)
                                    for i in range(residual_layers) if (i + 1) % max(1, cross_attention_every) == 0
                                    or i == residual_layers - 1}) if context_dim else None
        self.input = nn.Conv1d(in_channels, c, 1)
        self.embed = NoiseEmbedding(embed_dim, noise_scale)
        self.upsampler = MelUpsampler(cond_channels) if cond_channels else None
        self.layers = nn.ModuleList(ResidualLayer(c, 2 ** (i % dilation_cycle), embed_dim, cond_channels)
                                    for i in range(residual_layers))
        self.skip = nn.Conv1d(c, c, 1)
        self.output = nn.Conv1d(c, out_channels or in_channels, 1)
        nn.init.zeros_(self.output.weight)  # the untrained network predicts zero, as in DiffWave
        nn.init.zeros_(self.output.bias)

    def receptive_field(self) -> int:
        return 1 + 2 * sum(layer.dilated.dilation[0] for layer in self.layers)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None,
                label: torch.Tensor | None = None, context: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None):
        if x.ndim != 3:
            raise ValueError(f"The diffwave backbone takes waveforms shaped (B, C, L), got {tuple(x.shape)}.")
        if cond is not None:
            if self.upsampler is None:
                raise ConfigError("This diffwave backbone was built without mel conditioning but got `cond`; "
                                  "set datamodule.mel_conditioning=true for both data and backbone.")
            if cond.ndim != 3 or cond.shape[1] != self.cond_channels:
                raise ConfigError(f"diffwave expects a mel spectrogram (B, {self.cond_channels}, frames) as "
                                  f"cond, got {tuple(cond.shape)}.")
            cond = self.upsampler(cond.to(x.dtype), x.shape[-1])
        h = F.relu(self.input(x))
        emb = self.embed(noise_level.reshape(-1).expand(x.shape[0]))
        if label is not None:
            if self.class_embed is None:
                raise ValueError("This diffwave backbone was built without classes but got labels; set cond=class.")
            emb = emb + self.class_embed(label)
        if context is not None:
            if self.text_pool is None:
                raise ValueError("This diffwave backbone was built without text but got text; set cond=text.")
            emb = emb + self.text_pool(pooled.to(emb.dtype))
        skips = 0
        for i, layer in enumerate(self.layers):
            if context is not None and str(i) in self.cross:
                h = self.cross[str(i)](h, context)
            h, skip = layer(h, emb, cond)
            skips = skips + skip
        h = F.relu(self.skip(skips / math.sqrt(len(self.layers))))
        return self.output(h)


def build_diffwave(in_channels: int = 1, out_channels: int | None = None, preset: str = "base",
                   mel_conditioning: bool = False, n_mels: int = 80, num_classes: int = 0,
                   context_dim: int = 0, **overrides) -> nn.Module:
    if preset not in PRESETS:
        raise ConfigError(f"Unknown backbone.preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    check_keys(DiffWave, overrides, "backbone", "backbone.name=diffwave")
    kwargs = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return DiffWave(in_channels=in_channels, out_channels=out_channels,
                    cond_channels=n_mels if mel_conditioning else 0, num_classes=num_classes,
                    context_dim=context_dim, **kwargs)
