"""How a sample is shown to a person: files on disk and W&B media, one writer per domain.

Writers take samples shaped ``(N, C, *spatial)`` in the data range [-1, 1].
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError


def image_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``(N, C, H, W)`` in [-1, 1] -> one ``(H', W', 3)`` uint8 grid."""
    x = to_uint8(x)
    n, c, h, w = x.shape
    if c == 1:
        x = x.repeat(1, 3, 1, 1)
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(3, ncol * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i, :3]
    return grid.permute(1, 2, 0).numpy()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class ImageMedia:
    extension = ".png"

    def __init__(self, **_):
        pass

    def save(self, samples: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
        from PIL import Image

        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(to_uint8(samples)):
            arr = img.permute(1, 2, 0).numpy()
            arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
            p = out_dir / f"{prefix}_{i:05d}.png"
            Image.fromarray(arr).save(p)
            paths.append(p)
        return paths

    def to_wandb(self, samples: torch.Tensor, key: str = "samples") -> dict:
        import wandb

        return {key: wandb.Image(image_grid(samples), caption=f"{len(samples)} EMA samples")}


# kind -> "module:Class"; other domains register theirs here
MEDIA: dict[str, str] = {
    "image": "src.media:ImageMedia",
    "audio": "src.audio:AudioMedia",
    "mri": "src.media_mri:MRIMedia",
}


def build_media(cfg: dict):
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind not in MEDIA:
        raise ConfigError(f"Unknown media.kind '{kind}'; choose one of {', '.join(sorted(MEDIA))}.")
    module, cls = MEDIA[kind].split(":")
    return getattr(importlib.import_module(module), cls)(**cfg)
