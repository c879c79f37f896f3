"""Image samples as PNG files and W&B image grids."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from src.domains.common import image_grid, to_uint8


class ImageMedia:
    extension = ".png"

    def save(self, samples: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(to_uint8(samples)):
            arr = img.permute(1, 2, 0).numpy()
            arr = arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]
            p = out_dir / f"{prefix}_{i:05d}.png"
            Image.fromarray(arr).save(p)
            paths.append(p)
        return paths

    def save_grid(self, samples: torch.Tensor, per_row: int, path: Path) -> Path:
        """One picture with ``per_row`` samples per row (``src.sample label=all``: a row per class)."""
        Image.fromarray(image_grid(samples, nrow=per_row)).save(path)
        return path

    def to_wandb(self, samples: torch.Tensor, key: str = "samples", classes: list[str] | None = None,
                 row_kind: str = "class") -> dict:
        """One grid; with ``classes`` (each sample's class caption, class after class) one row per class
        (``row_kind="prompt"``: each sample's prompt, one row per prompt)."""
        import wandb  # optional heavy dependency: wandb (only when logging to W&B)

        if not classes:
            return {key: wandb.Image(image_grid(samples), caption=f"{len(samples)} EMA samples")}
        rows = list(dict.fromkeys(classes))
        caption = f"{len(samples)} EMA samples, one row per {row_kind}: {', '.join(rows)}"
        return {key: wandb.Image(image_grid(samples, nrow=len(samples) // len(rows)), caption=caption)}
