"""A fixed log-mel "autoencoder" for latent audio (``latent.autoencoder=mel``): no stage 1, no trained weights.

``encode`` maps waveforms ``(B, C, L)`` in [-1, 1] to normalised log-mel spectrograms: with ``layout="sequence"``
``(B, C * n_mels, frames)``, ``frames = L // hop + 1`` (a sequence of mel frames for the 1D U-Net); with
``layout="image"`` ``(B, C, n_mels, L // hop)`` (the last centred frame dropped, so 1.024 s at 16 kHz and hop 256 is
a 64 x 64 image for the 2D U-Net: the mel-as-image view of Riffusion / AudioLDM). The magnitude (power 1) mel
spectrogram with ``n_fft = 4 * hop``, then
``(log(max(mel, 1e-5)) + 5) / 4``, which puts clips in [-1, 1] roughly (the floor 1e-5 gives -1.63, a 440 Hz
sine of peak 0.95 at hop 128 gives 2.44 at most). ``decode`` inverts the affine and the log, maps the mel bands back to
linear frequencies (least squares, torchaudio's InverseMelScale) and recovers a phase by Griffin-Lim (32
iterations, momentum 0.99) from random phases drawn with a fixed seed, so decoding the same latents always gives
the same waveform. Griffin-Lim leaves phase artefacts (a slightly metallic sound); a trained vocoder would
sound better.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchaudio.transforms import InverseMelScale, MelSpectrogram

# the fixed affine: latent = (log(max(mel, FLOOR)) + SHIFT) / SPREAD
FLOOR, SHIFT, SPREAD = 1e-5, 5.0, 4.0
GRIFFIN_LIM_ITERS, MOMENTUM, PHASE_SEED = 32, 0.99, 0
LAYOUTS = ("sequence", "image")


class MelCodec(nn.Module):
    """The interface LatentSpace uses from an autoencoder: ``encode(x) -> (z_mu, z_sigma)`` (sigma zero: the
    encoding is deterministic) and ``decode(z) -> (B, C, length)``. ``length``: the clip length in samples that
    ``decode`` crops or pads to (None: ``hop * (frames - 1)``). Only buffers (the mel filterbank, the window),
    no trainable parameters."""

    def __init__(self, sample_rate: int, n_mels: int = 64, hop: int = 128, in_channels: int = 1,
                 length: int | None = None, layout: str = "sequence", **_):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"MelCodec layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.sample_rate, self.n_mels, self.hop = int(sample_rate), int(n_mels), int(hop)
        self.in_channels = int(in_channels)
        self.n_fft = 4 * self.hop
        self.length = int(length) if length else None
        self.mel = MelSpectrogram(self.sample_rate, n_fft=self.n_fft, hop_length=self.hop, n_mels=self.n_mels,
                                  power=1.0)
        self.inverse_mel = InverseMelScale(self.n_fft // 2 + 1, self.n_mels, self.sample_rate)
        self.register_buffer("window", torch.hann_window(self.n_fft))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel = self.mel(x.float())  # (B, C, n_mels, frames)
        z = (mel.clamp(min=FLOOR).log() + SHIFT) / SPREAD
        if self.layout == "image":
            z = z[..., : x.shape[-1] // self.hop]
        else:
            z = z.reshape(x.shape[0], -1, z.shape[-1])
        return z, torch.zeros_like(z)

    def magnitudes(self, z: torch.Tensor) -> torch.Tensor:
        """Linear-frequency magnitudes ``(B * C, n_fft // 2 + 1, frames)`` of latents of either layout."""
        mel = torch.exp(z.float() * SPREAD - SHIFT).reshape(-1, self.n_mels, z.shape[-1])
        return self.inverse_mel(mel)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        spec = self.magnitudes(z)
        frames = z.shape[-1]
        if self.layout == "image":  # the dropped last centred frame: its neighbour's magnitudes stand in
            spec = torch.cat([spec, spec[..., -1:]], dim=-1)
        length = self.length or self.hop * (frames if self.layout == "image" else frames - 1)
        wave = self.griffin_lim(spec, length)
        return wave.reshape(z.shape[0], -1, length).to(z.dtype)

    def griffin_lim(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """torchaudio's fast Griffin-Lim (Perraudin et al. 2013), from phases drawn with a fixed seed."""
        stft = dict(n_fft=self.n_fft, hop_length=self.hop, window=self.window)
        generator = torch.Generator().manual_seed(PHASE_SEED)
        phase = torch.rand(spec.shape, generator=generator, dtype=torch.float64).to(spec.device, spec.dtype)
        angles = torch.polar(torch.ones_like(spec), 2 * math.pi * phase)
        previous = torch.zeros_like(angles)
        for _ in range(GRIFFIN_LIM_ITERS):
            wave = torch.istft(spec * angles, length=length, **stft)
            rebuilt = torch.stft(wave, return_complex=True, pad_mode="reflect", **stft)
            angles = rebuilt - previous * (MOMENTUM / (1 + MOMENTUM))
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        return torch.istft(spec * angles, length=length, **stft)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, sigma = self.encode(x)
        return self.decode(z), z, sigma
