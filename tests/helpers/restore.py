"""Tiny untrained checkpoints laid out as src.train writes them, for the restoration and anomaly tests."""

from __future__ import annotations

from pathlib import Path

import torch

from src.module import DiffusionModule

DIFFUSION = dict(family="ddpm", schedule="linear", num_timesteps=1000, prediction="eps", sampler="ddim", steps=4,
                 clip_denoised=[-1.0, 1.0])


def make_checkpoint(path: Path, domain: str, data_shape, **datamodule) -> Path:
    torch.manual_seed(0)
    if domain == "audio":
        backbone = dict(name="diffwave", in_channels=data_shape[0], preset="tiny", mel_conditioning=False, n_mels=80)
    else:
        backbone = dict(name="unet", spatial_dims=len(data_shape) - 1, in_channels=data_shape[0], preset="tiny")
    module = DiffusionModule(backbone=backbone, diffusion=DIFFUSION, data_shape=list(data_shape))
    defaults = {"audio": {"sample_rate": 8000, "peak_level": 0.95, "normalize": "peak", "mel_conditioning": False},
                "image": {"resolution": data_shape[-1], "channels": data_shape[0]},
                "mri": {"mode": "slice" if len(data_shape) == 3 else "volume",
                        "intensity_scaling": "zero_anchored_percentile", "intensity_percentile": 99.5,
                        "slice_axis": 2}}[domain]
    run_config = {"domain": {"name": domain}, "datamodule": {**defaults, **datamodule}}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "run_config": run_config}, path)
    return path
