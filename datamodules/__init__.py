"""Per-domain datamodules, built by name through an allow-list."""

from __future__ import annotations

import importlib

from .base import DataError, DiffusionDataModule

# name -> "module:Class", imported lazily so one domain's heavy imports never slow another's
DATAMODULES: dict[str, str] = {
    "image": "datamodules.image:ImageDataModule",
    "audio": "datamodules.audio:AudioDataModule",
    "mri": "datamodules.mri:MRIDataModule",
    "mri_recon": "datamodules.fastmri_train:ReconPriorDataModule",  # experiment=recon_prior
}


def build_datamodule(cfg: dict, seed: int = 0) -> DiffusionDataModule:
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in DATAMODULES:
        raise DataError(f"Unknown datamodule.name '{name}'; choose one of {', '.join(sorted(DATAMODULES))}.")
    module, cls = DATAMODULES[name].split(":")
    return getattr(importlib.import_module(module), cls)(seed=seed, **cfg)


__all__ = ["DATAMODULES", "DataError", "DiffusionDataModule", "build_datamodule"]
