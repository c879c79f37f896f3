"""The shared data pieces: the datamodule base class, webdataset shards and their streaming reader.

Each domain's datamodule lives in its package (``src/domains/<name>/``); ``build_datamodule`` builds the one
``datamodule.name`` names through the domain registry.
"""

from __future__ import annotations

from .base import DataError, DiffusionDataModule


def build_datamodule(cfg: dict, seed: int = 0) -> DiffusionDataModule:
    from src.domains import parts

    return parts("datamodule", "datamodule.name", DataError).build(cfg, seed=seed)


__all__ = ["DataError", "DiffusionDataModule", "build_datamodule"]
