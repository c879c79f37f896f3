"""How a sample is shown to a person: the media writer of the domain a config names.

Each domain's ``DOMAIN.media`` is a writer class (``save(samples, out_dir, prefix) -> paths``, optional
``to_wandb(samples, key) -> dict``) taking samples shaped ``(N, C, *spatial)`` in the data range [-1, 1];
the domain registry builds the one ``media.kind`` names (``src.domains.build_media``). The picture helpers
writers share live in ``src.domains.common``; both are re-exported here for older imports.
"""

from __future__ import annotations

from .domains import build_media
from .domains.common import image_grid, to_uint8

__all__ = ["build_media", "image_grid", "to_uint8"]
