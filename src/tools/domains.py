"""The one place where the tools import from domain code (data modules), so moving that code touches one file."""

from __future__ import annotations

from datamodules.base import DataError
from datamodules.mri import INTENSITY_SCALING

__all__ = ["DataError", "INTENSITY_SCALING"]
