"""Noisy sines: each item a random frequency, phase and amplitude plus a little Gaussian noise."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import DiffusionDataModule, Subset, split_indices
from src.errors import positive_int


class NoisySines(Dataset):
    def __init__(self, size: int, length: int, channels: int, noise: float, seed: int):
        self.size, self.length, self.channels, self.noise, self.seed = size, length, channels, noise, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        t = np.arange(self.length) / self.length
        cycles = rng.uniform(2, 6)
        wave = rng.uniform(0.5, 0.8) * np.sin(2 * np.pi * cycles * t + rng.uniform(0, 2 * np.pi))
        x = wave[None] + self.noise * rng.standard_normal((self.channels, self.length))
        return {"x": torch.from_numpy(np.clip(x, -1, 1).astype(np.float32))}


class SineDataModule(DiffusionDataModule):
    def __init__(self, length: int = 64, channels: int = 1, noise: float = 0.05, builtin_size: int = 256,
                 val_fraction: float = 0.1, **kw):
        super().__init__(**kw)
        self.length, self.channels = positive_int(length, "datamodule.length"), channels
        self.noise, self.builtin_size, self.val_fraction = noise, builtin_size, val_fraction

    @property
    def data_shape(self) -> list[int]:
        return [self.channels, self.length]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            full = NoisySines(self.builtin_size, self.length, self.channels, self.noise, self.seed)
            train_idx, val_idx = split_indices(len(full), self.val_fraction, self.seed)
            self.train_set, self.val_set = Subset(full, train_idx), Subset(full, val_idx)
