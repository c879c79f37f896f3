"""Stage 2: the DiffusionModule, diffusing in a frozen autoencoder's latent space.

Batches are encoded on the fly (a posterior sample, from a generator seeded by (seed, step, rank), so a
resumed run replays them); the objective, sampler and EMA see latents shaped ``(latent_channels,
*spatial / factor)`` and are unchanged. ``sample`` decodes, so callbacks, metrics, ``src.sample`` and the
media writers get data-shaped tensors as from a pixel-space model.
"""

from __future__ import annotations

import logging
import warnings

import torch

from src.checkpoint import CheckpointError
from src.errors import ConfigError, positive_int
from src.module import DiffusionModule

from .space import LatentSpace

log = logging.getLogger(__name__)
# the frozen autoencoder stays in eval mode on purpose (LatentSpace.train)
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

RESTART = "start a new run (a new paths.output_dir) to diffuse in another autoencoder's latent space"


class LatentDiffusionModule(DiffusionModule):
    """``latent``: ``arch`` (the AutoencoderKL config), ``source`` (content hash and step of the autoencoder
    checkpoint), ``scale_factor`` (null: fitted on ``scale_batches`` batches at the start of training)."""

    def __init__(self, backbone: dict, diffusion: dict, data_shape: list[int], latent: dict, **kwargs):
        factor = latent.get("scale_factor")
        if factor is not None and not (isinstance(factor, (int, float)) and factor > 0):
            raise ConfigError(f"latent.scale_factor must be a positive number or null (fitted on the data), "
                              f"got {factor!r}.")
        if latent.get("scale_batches") is not None:
            positive_int(latent["scale_batches"], "latent.scale_batches")
        space = LatentSpace(latent["arch"], data_shape, latent.get("scale_factor"))
        if int(latent["arch"]["in_channels"]) != int(data_shape[0]):
            raise ConfigError(f"The autoencoder was trained on {latent['arch']['in_channels']}-channel data, this "
                              f"run's data has {data_shape[0]} channels; set datamodule.channels to match or train "
                              "an autoencoder on this data.")
        # the backbone sees latents; a data-range clip ([-1, 1]) means nothing for them
        backbone = {**backbone, "in_channels": space.shape[0]}
        diffusion = {**diffusion, "clip_denoised": None}
        super().__init__(backbone=backbone, diffusion=diffusion, data_shape=data_shape, **kwargs)
        self.latent = space
        self.pixel_shape = list(data_shape)
        self.data_shape = list(space.shape)  # what the sampler draws
        self.scale_batches = int(latent.get("scale_batches") or 4)

    # ---- the latent space ---------------------------------------------------------------------------
    def prepare_input(self, x: torch.Tensor, *parts: int) -> torch.Tensor:
        return self.latent.encode(x, self._generator(*parts, 2)).to(x.dtype)

    def on_fit_start(self):
        if self.latent.scaled:  # given (latent.scale_factor) or restored from the checkpoint
            return
        dm = self.trainer.datamodule
        # held-out items in a fixed order: the training data position is left alone
        loader = dm.val_dataloader()
        if isinstance(loader, list) and not loader:  # no validation split
            loader = dm.train_dataloader()
        batches = []
        for batch in loader:
            batches.append(batch["x"] if isinstance(batch, dict) else batch[0])
            if len(batches) >= self.scale_batches:
                break
        reduce = (lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")) if self.trainer.world_size > 1 else None
        factor = self.latent.fit_scale(batches, reduce=reduce, generator=self._generator(2**20, self.global_rank))
        if self.trainer.is_global_zero:
            log.info("Latent scale factor %.5f (1 / std of the latents of %d batches).", factor, len(batches))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        theirs = ((checkpoint.get("hyper_parameters") or {}).get("latent") or {}).get("source") or {}
        ours = (self.hparams.get("latent") or {}).get("source") or {}
        if theirs.get("sha256") != ours.get("sha256"):
            raise CheckpointError(f"The run's checkpoint diffuses in the latent space of autoencoder "
                                  f"{theirs.get('file')} (sha256 {str(theirs.get('sha256'))[:12]}), but "
                                  f"latent.autoencoder is {ours.get('file')} (sha256 {str(ours.get('sha256'))[:12]}); "
                                  f"pass the same autoencoder checkpoint to resume, or {RESTART}.")

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        bs = batch_size or len(z)
        return torch.cat([self.latent.decode(z[i:i + bs]) for i in range(0, len(z), bs)])

    @torch.no_grad()
    def sample(self, num: int, *args, shape=None, batch_size: int | None = None, **kwargs) -> torch.Tensor:
        """Latent samples from the diffusion model, decoded to the data's shape."""
        if shape is not None:
            raise ConfigError("A latent diffusion model samples at its training shape; drop the shape option.")
        z = super().sample(num, *args, batch_size=batch_size, **kwargs)
        return self.decode(z, batch_size)
