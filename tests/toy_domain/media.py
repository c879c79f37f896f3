"""Toy samples as CSV files: one row per time step, one column per channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class CsvMedia:
    extension = ".csv"

    def __init__(self, precision: int = 6):
        self.precision = precision

    def save(self, samples: torch.Tensor, out_dir: Path, prefix: str = "sample") -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, s in enumerate(samples.detach().float().cpu().clamp(-1, 1)):
            p = out_dir / f"{prefix}_{i:05d}{self.extension}"
            np.savetxt(p, s.T.numpy(), delimiter=",", fmt=f"%.{self.precision}f")
            paths.append(p)
        return paths
