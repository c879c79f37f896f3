"""Whole images, recordings and volumes of any size through a model trained on fixed-size crops.

The signal is cut into overlapping tiles of the model's size; tile results are blended with weights that
ramp down over the overlaps, so seams are smooth and every output sample is a weighted mean of its tiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


def positions(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    count = math.ceil((length - tile) / step) + 1
    return sorted({min(i * step, length - tile) for i in range(count)})


def ramp(size: int, left: int, right: int) -> torch.Tensor:
    """1 inside, a raised-cosine ramp over ``left`` / ``right`` samples at the edges that overlap a neighbour."""
    w = torch.ones(size, dtype=torch.float64)
    for n, sl in ((left, slice(0, left)), (right, slice(size - right, size))):
        if n > 0:
            t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
            w[sl] = 0.5 - 0.5 * torch.cos(math.pi * (t if sl.start == 0 else t.flip(0)))
    return w


class Tiling:
    """Tiles of ``tile`` over the last ``len(tile)`` axes of a signal shaped ``full``."""

    def __init__(self, full: tuple[int, ...], tile: tuple[int, ...], overlap: float = 0.25, align: int = 1):
        self.full = tuple(full)
        self.tile = tuple(min(t, n) for t, n in zip(tile, full))
        ov = [int(round(t * overlap)) for t in self.tile]
        self.starts = [positions(n, t, o, align) for n, t, o in zip(self.full, self.tile, ov)]

    def regions(self) -> list[tuple[slice, ...]]:
        out: list[tuple[slice, ...]] = [()]
        for axis_starts, t in zip(self.starts, self.tile):
            out = [r + (slice(s, s + t),) for r in out for s in axis_starts]
        return out

    def weight(self, region: tuple[slice, ...]) -> torch.Tensor:
        """Blending weight of one tile (ramps only where it overlaps a neighbour)."""
        w = torch.ones((), dtype=torch.float64)
        for axis, sl in enumerate(region):
            starts = self.starts[axis]
            i = starts.index(sl.start)
            left = starts[i - 1] + self.tile[axis] - sl.start if i > 0 else 0
            right = sl.stop - starts[i + 1] if i + 1 < len(starts) else 0
            w = w[..., None] * ramp(self.tile[axis], max(left, 0), max(right, 0))
        return w

    def batches(self, size: int) -> Iterator[list[tuple[slice, ...]]]:
        regions = self.regions()
        for i in range(0, len(regions), size):
            yield regions[i:i + size]


def blend(tiling: Tiling, leading: tuple[int, ...], results) -> torch.Tensor:
    """Weighted overlap-add of ``(region, tensor (*leading, *tile))`` pairs into one ``(*leading, *full)``."""
    acc = torch.zeros((*leading, *tiling.full), dtype=torch.float64)
    norm = torch.zeros(tiling.full, dtype=torch.float64)
    for region, x in results:
        w = tiling.weight(region)
        acc[(..., *region)] += x.double().cpu() * w
        norm[region] += w
    return (acc / norm.clamp_min(1e-12)).float()
