"""The one place where the tools import from domain code (data modules), so moving that code touches one file."""

from __future__ import annotations

from datamodules.base import DataError
from src.domains.mri.data import INTENSITY_SCALING

__all__ = ["DataError", "INTENSITY_SCALING"]
