"""The frozen latent space of stage 2: a trained AutoencoderKL and the scale factor of its latents.

Latents are ``scale_factor * z`` with z drawn from the encoder's posterior; ``scale_factor`` is 1 / std of
the latents of the first data batches (Stable Diffusion's and MONAI's LatentDiffusionInferer convention), so
the diffusion model sees unit-variance data. Both the autoencoder's weights and the factor are buffers and
parameters of this module, so every diffusion checkpoint carries what it needs to decode its samples.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from src.checkpoint import CheckpointError, load_checkpoint

from .networks import autoencoder_kwargs, build_autoencoder, latent_shape


class LatentSpace(nn.Module):
    def __init__(self, arch: dict, data_shape: list[int], scale_factor: float | None = None):
        super().__init__()
        self.arch = dict(arch)
        self.data_shape = list(data_shape)
        self.shape = latent_shape(self.arch, self.data_shape)
        self.autoencoder = build_autoencoder(self.arch).requires_grad_(False).eval()
        # 0 = not computed yet (a finite placeholder: checkpoints refuse non-finite tensors)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor or 0.0)))

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in inference mode

    @property
    def size_fix(self) -> str | None:
        """What to change when the latents' sizes do not fit the backbone (``{m}``: the multiple it needs), where
        that is not the data's own size; None: the data's size, as for pixel space."""
        if self.arch.get("kind") == "mel" and self.arch.get("layout") == "image":  # frames = clip samples // hop
            return (f"set datamodule.clip_seconds so that its samples / latent.mel.hop={self.arch['hop']} is a "
                    "multiple of {m} (e.g. 1.024 s at 16000 Hz and hop 256), and latent.mel.n_mels to a multiple of "
                    "{m},")
        return None

    @property
    def scaled(self) -> bool:
        return bool(self.scale_factor > 0)

    @torch.no_grad()
    def encode_unscaled(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A posterior sample (``generator`` given) or the posterior mean (none), before scaling."""
        z_mu, z_sigma = self.autoencoder.encode(x)
        if generator is None:
            return z_mu
        eps = torch.randn(z_mu.shape, generator=generator, device=z_mu.device, dtype=z_mu.dtype)
        return z_mu + z_sigma * eps

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.scaled:
            raise RuntimeError("LatentSpace.encode before the scale factor was set (fit_scale or a checkpoint)")
        return self.encode_unscaled(x, generator) * self.scale_factor.to(x.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z / self.scale_factor.to(z.dtype))

    @torch.no_grad()
    def fit_scale(self, batches, reduce=None, generator: torch.Generator | None = None) -> float:
        """Set ``scale_factor`` to 1 / std of the latents of ``batches`` (all elements pooled); ``reduce``
        sums a tensor over ranks, so every rank gets the same factor."""
        device = self.scale_factor.device
        moments = torch.zeros(3, dtype=torch.float64, device=device)  # count, sum, sum of squares
        for x in batches:
            z = self.encode_unscaled(x.to(device), generator).double()
            moments += torch.stack([torch.tensor(z.numel(), dtype=torch.float64, device=device), z.sum(),
                                    z.square().sum()])
        if reduce is not None:
            moments = reduce(moments)
        n, s, sq = moments.tolist()
        if n < 2:
            raise CheckpointError("The latent scale factor needs data: the datamodule gave no batch to encode; "
                                  "set latent.scale_factor=VALUE.")
        var = (sq - s * s / n) / (n - 1)
        if not var > 0:
            raise CheckpointError("The autoencoder's latents have zero variance on the data, so they cannot be "
                                  "scaled; check the autoencoder checkpoint (latent.autoencoder).")
        self.scale_factor.fill_(var**-0.5)
        return float(self.scale_factor)


def file_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a sharded (trainer=fsdp) checkpoint folder: its files' relative
    names and contents in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_autoencoder(path: str | Path, use_ema: bool = True) -> tuple[dict, dict, dict]:
    """``(arch, weights, source)`` of a ``stage=autoencoder`` checkpoint, read weights-only (src.safe_load);
    ``source`` names its content hash and step, which the diffusion checkpoint records."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"latent.autoencoder={path} does not exist; pass the checkpoints/last.ckpt of a "
                              "python -m src.train stage=autoencoder run.")
    ckpt = load_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    if "autoencoder" not in hp or "data_shape" not in hp:
        raise CheckpointError(f"latent.autoencoder={path} is not an autoencoder checkpoint (it has no autoencoder "
                              "config); pass the last.ckpt of a python -m src.train stage=autoencoder run.")
    arch = autoencoder_kwargs(ckpt.get("autoencoder_arch") or {
        "in_channels": hp["data_shape"][0], "spatial_dims": len(hp["data_shape"]) - 1,
        **{k: v for k, v in hp["autoencoder"].items() if v is not None}})
    prefix = "ema.module." if use_ema else "autoencoder."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(f"latent.autoencoder={path} holds no {prefix.rstrip('.')} weights; pass the last.ckpt "
                              "of a python -m src.train stage=autoencoder run.")
    run = ckpt.get("run_config") or {}
    # what the autoencoder was trained on, for stage 2's checks (None in checkpoints without a run_config)
    rate = (run.get("datamodule") or {}).get("sample_rate") if arch.get("kind") == "waveform" else None
    source = {"sha256": file_sha256(path), "step": int(ckpt.get("global_step", -1)),
              "file": path.name, "use_ema": bool(use_ema), "data_shape": list(hp["data_shape"]),
              "domain": (run.get("domain") or {}).get("name"), "sample_rate": rate}
    return arch, weights, source
