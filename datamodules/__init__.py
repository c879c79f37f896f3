"""The shared data pieces: the datamodule base class, webdataset shards and their streaming reader.

Each domain's datamodule lives in its package (``src/domains/<name>/``); ``src.domains.build_datamodule``
builds the one ``datamodule.name`` names through the domain registry (this layer sits below the domains and
never imports them).
"""

from __future__ import annotations

from src.errors import DataError

from .base import DiffusionDataModule

__all__ = ["DataError", "DiffusionDataModule"]
