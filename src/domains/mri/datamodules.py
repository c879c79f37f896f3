"""The mri domain's datamodule, by ``datamodule.grid``: ``resampled`` (RAS, resampled to
``datamodule.spacing`` and cropped to ``datamodule.shape``: generation, volumes) or ``acquisition``
(``experiment=recon_prior``: the scans' own in-plane grid, fastMRI HDF5 included, for reconstruction)."""

from __future__ import annotations

from src.errors import DataError
from src.registry import accepted_keys, check_keys

from .data import MRIDataModule
from .recon_prior import ReconPriorDataModule

GRIDS = ("resampled", "acquisition")


def mri_datamodule(grid: str = "resampled", seed: int = 0, **cfg):
    if grid not in GRIDS:
        raise DataError(f"datamodule.grid must be one of {', '.join(GRIDS)}, got {grid!r}.")
    if grid == "resampled":
        check_keys(MRIDataModule, cfg, "datamodule", "the mri datamodule", DataError)
        return MRIDataModule(seed=seed, **cfg)
    if cfg.get("spacing") is not None:
        raise DataError("datamodule.grid=acquisition never resamples (the prior learns the scans' own pixel "
                        "size); drop datamodule.spacing.")
    # the resampling pipeline's own options (foreground crops, caches, built-in phantoms) have no meaning here
    pipeline_only = (accepted_keys(MRIDataModule) or set()) - (accepted_keys(ReconPriorDataModule) or set())
    cfg = {k: v for k, v in cfg.items() if k not in pipeline_only}
    check_keys(ReconPriorDataModule, cfg, "datamodule", "datamodule.grid=acquisition", DataError)
    return ReconPriorDataModule(seed=seed, **cfg)
