"""A 1D waveform autoencoder (stage 1 for ``domain=audio``) and the multi-resolution STFT loss that trains it.

Written here because no library in the lock ships one: MONAI's AutoencoderKL is 2D/3D only, and the audio
codecs (EnCodec, DAC, stable-audio-tools) are not installed. The design follows those codecs in small:
strided Conv1d stages with dilated residual blocks (dilations 1, 3, 9) down to ``hop = prod(strides)``
samples per latent frame, a diagonal-Gaussian (KL) latent, and a mirrored decoder of transposed
convolutions. It has the call surface of MONAI's AutoencoderKL (``forward -> (recon, mu, sigma)``,
``encode``, ``decode``, ``reconstruct``), so stage 1, the latent space and stage 2 use it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import ConfigError

# channels per stage (each stage ends with a downsampling by its stride), strides, residual blocks per stage
PRESETS_1D: dict[str, dict] = {
    "tiny": dict(channels=(8, 16, 32), strides=(4, 4, 4), num_res_blocks=1),
    "small": dict(channels=(16, 32, 64), strides=(4, 4, 4), num_res_blocks=1),
    "base": dict(channels=(32, 64, 128), strides=(4, 4, 4), num_res_blocks=2),
    "large": dict(channels=(32, 64, 128, 256), strides=(2, 4, 4, 4), num_res_blocks=2),
}
ARCH_KEYS_1D = ("spatial_dims", "in_channels", "out_channels", "channels", "strides", "num_res_blocks",
                "latent_channels", "kind")
MIN_HOP = 64  # the floor: latents at most 1/64 of the sample rate


def waveform_kwargs(cfg: dict) -> dict:
    """The resolved keyword arguments of a WaveformAutoencoder (a preset plus overrides, or already resolved)."""
    cfg = {k: v for k, v in dict(cfg).items() if v is not None}
    preset = cfg.pop("preset", None)
    if preset is not None and preset not in PRESETS_1D:
        raise ConfigError(f"Unknown autoencoder.preset '{preset}'; choose one of {', '.join(PRESETS_1D)}.")
    cfg.pop("attention_levels", None)  # a 2D/3D option; the waveform autoencoder has no attention
    unknown = sorted(set(cfg) - set(ARCH_KEYS_1D))
    if unknown:
        raise ConfigError(f"Unknown autoencoder option '{unknown[0]}' for audio; known: preset, "
                          f"{', '.join(k for k in ARCH_KEYS_1D if k != 'kind')}.")
    kw = {**(PRESETS_1D[preset or "small"] if preset or "channels" not in cfg else {}), **cfg}
    kw["kind"] = "waveform"
    kw.setdefault("in_channels", 1)
    kw.setdefault("out_channels", kw["in_channels"])
    kw.setdefault("latent_channels", 8)
    kw.setdefault("num_res_blocks", 1)
    kw["channels"] = [int(c) for c in kw["channels"]]
    kw["strides"] = [int(s) for s in kw.get("strides") or [4] * len(kw["channels"])]
    if len(kw["strides"]) != len(kw["channels"]):
        raise ConfigError(f"autoencoder.strides needs one entry per stage of autoencoder.channels "
                          f"({len(kw['channels'])}), got {len(kw['strides'])}.")
    if any(s < 2 for s in kw["strides"]) or hop_of(kw) < MIN_HOP:
        raise ConfigError(f"autoencoder.strides {kw['strides']} give a hop of {hop_of(kw)} samples; the waveform "
                          f"autoencoder needs whole strides >= 2 whose product is at least {MIN_HOP}.")
    return kw


def hop_of(kwargs: dict) -> int:
    """Samples per latent frame: the product of the strides."""
    return int(math.prod(int(s) for s in kwargs["strides"]))


class ResBlock(nn.Module):
    """Dilated residual unit of SoundStream/EnCodec: ELU, dilated conv k7, ELU, conv k1, added back."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.net = nn.Sequential(nn.ELU(), nn.Conv1d(channels, channels, 7, padding=3 * dilation, dilation=dilation),
                                 nn.ELU(), nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        return x + self.net(x)


def _res_stack(channels: int, blocks: int) -> list[nn.Module]:
    return [ResBlock(channels, d) for _ in range(blocks) for d in (1, 3, 9)]


class WaveformAutoencoder(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int | None = None, channels=(16, 32, 64),
                 strides=(4, 4, 4), num_res_blocks: int = 1, latent_channels: int = 8, spatial_dims: int = 1,
                 kind: str = "waveform"):
        super().__init__()
        channels, strides = list(channels), list(strides)
        self.hop = int(math.prod(strides))
        nxt = [*channels[1:], channels[-1]]  # each stage's downsampling leads into the next stage's width
        enc: list[nn.Module] = [nn.Conv1d(in_channels, channels[0], 7, padding=3)]
        for c, c_next, s in zip(channels, nxt, strides):
            enc += [*_res_stack(c, num_res_blocks), nn.ELU(),
                    nn.Conv1d(c, c_next, 2 * s, stride=s, padding=s // 2 + s % 2)]
        enc += [nn.ELU(), nn.Conv1d(channels[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(latent_channels, channels[-1], 7, padding=3)]
        for c, c_next, s in zip(reversed(channels), reversed(nxt), reversed(strides)):
            dec += [nn.ELU(), nn.ConvTranspose1d(c_next, c, 2 * s, stride=s, padding=s // 2 + s % 2,
                                                 output_padding=s % 2),
                    *_res_stack(c, num_res_blocks)]
        dec += [nn.ELU(), nn.Conv1d(channels[0], out_channels or in_channels, 7, padding=3)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % self.hop:
            raise ValueError(f"waveform length {x.shape[-1]} is not a multiple of the hop {self.hop}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def sampling(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mu + sigma * torch.randn_like(sigma)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

    def forward(self, x: torch.Tensor):
        mu, sigma = self.encode(x)
        return self.decode(self.sampling(mu, sigma)), mu, sigma


def multi_resolution_stft_loss(x: torch.Tensor, y: torch.Tensor, fft_sizes=(256, 512, 1024)) -> torch.Tensor:
    """Mean over FFT sizes of spectral convergence + L1 of log magnitudes (Parallel WaveGAN, Yamamoto et al.
    2020), hop = size / 4, Hann window; ``x`` the reconstruction, ``y`` the target, both ``(B, C, L)``."""
    x, y = x.float().reshape(-1, x.shape[-1]), y.float().reshape(-1, y.shape[-1])
    total = x.new_zeros(())
    sizes = [n for n in fft_sizes if n <= x.shape[-1]] or [min(fft_sizes)]
    for n in sizes:
        win = torch.hann_window(n, device=x.device)
        mx = torch.stft(x, n, n // 4, window=win, return_complex=True).abs().clamp_min(1e-7)
        my = torch.stft(y, n, n // 4, window=win, return_complex=True).abs().clamp_min(1e-7)
        norm = torch.linalg.vector_norm(my, dim=(-2, -1)).clamp_min(1e-7)
        sc = torch.linalg.vector_norm(my - mx, dim=(-2, -1)) / norm
        total = total + sc.mean() + F.l1_loss(mx.log(), my.log())
    return total / len(sizes)
