"""Random brain-like 2D phantoms (magnitude in [0, 1]) for the reconstruction study, generated in code.

A bright skull ring, a brain ellipse with smooth grey/white contrast, dark ventricles, a few bright and
dark lesions, a smooth coil-like bias field and mild texture; every index gives a different slice.
"""

from __future__ import annotations

import numpy as np


def _ellipse(yy, xx, cy, cx, ry, rx, angle):
    c, s = np.cos(angle), np.sin(angle)
    y, x = yy - cy, xx - cx
    return ((x * c + y * s) / rx) ** 2 + ((-x * s + y * c) / ry) ** 2


def phantom(index: int, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[-1:1:complex(0, size), -1:1:complex(0, size)]
    rot = rng.uniform(-0.3, 0.3)
    ry, rx = rng.uniform(0.75, 0.9), rng.uniform(0.6, 0.75)
    cy, cx = rng.uniform(-0.05, 0.05, 2)
    head = _ellipse(yy, xx, cy, cx, ry, rx, rot)
    brain = _ellipse(yy, xx, cy, cx, ry - 0.08, rx - 0.08, rot)
    img = np.where(head <= 1, 1.0, 0.0) * np.where(brain > 1, 1.0, 0.0)          # skull ring
    inside = brain <= 1
    grey = 0.45 + 0.1 * np.cos(3 * np.pi * np.sqrt(brain.clip(0, 1)) + rng.uniform(0, np.pi))
    img = np.where(inside, grey, img)
    white = _ellipse(yy, xx, cy, cx, (ry - 0.08) * 0.7, (rx - 0.08) * 0.7, rot) <= 1
    img = np.where(white, 0.65, img)
    for sign in (-1, 1):  # two ventricles
        vy, vx = cy + rng.uniform(-0.1, 0.1), cx + sign * rng.uniform(0.08, 0.16)
        v = _ellipse(yy, xx, vy, vx, rng.uniform(0.15, 0.3), rng.uniform(0.04, 0.08), rot + sign * 0.2) <= 1
        img = np.where(v & inside, 0.12, img)
    for _ in range(rng.integers(1, 4)):  # lesions
        ly, lx = cy + rng.uniform(-0.5, 0.5), cx + rng.uniform(-0.4, 0.4)
        r = rng.uniform(0.03, 0.09)
        les = _ellipse(yy, xx, ly, lx, r, r * rng.uniform(0.6, 1.4), rng.uniform(0, np.pi)) <= 1
        img = np.where(les & inside, rng.choice([0.9, 0.25]), img)
    bias = 1 + 0.15 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
    texture = 1 + 0.03 * rng.standard_normal((size, size))
    return np.clip(img * bias * texture, 0, 1).astype(np.float32)


def phantom_volume(start: int, count: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.stack([phantom(start + i, size, seed) for i in range(count)])
