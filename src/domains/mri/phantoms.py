"""Head-like MRI phantoms generated in code: the MRI domain's built-in data, and test images for recon.

    from src.domains.mri.phantoms import head_phantom
    vol = head_phantom((32, 32, 32), seed=3)          # float32 magnitude, 3D
    img = head_phantom((64, 64), seed=3)              # a 2D (axial) phantom
    z = head_phantom((64, 64), seed=3, complex_valued=True)  # complex64 with a smooth phase

Each call draws a head from ``seed``: nested ellipsoids for scalp, skull, CSF, grey and white matter,
two ventricles and up to three lesions, with random sizes, positions, rotation and a T1-, T2- or PD-like
contrast, multiplied by a smooth bias field, with a smooth phase and complex Gaussian noise, so the
magnitude carries Rician noise. Axes follow RAS (0: right-left, 1: anterior-posterior, 2: inferior-superior)
over a field of view of [-1, 1] per axis; the brightest tissue is about 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from src.errors import ConfigError

# tissue intensities (scalp fat, skull bone, CSF, grey matter, white matter) per contrast
CONTRASTS: dict[str, dict[str, float]] = {
    "t1": {"fat": 0.9, "bone": 0.06, "csf": 0.15, "gm": 0.5, "wm": 0.75},
    "t2": {"fat": 0.55, "bone": 0.05, "csf": 1.0, "gm": 0.6, "wm": 0.4},
    "pd": {"fat": 0.8, "bone": 0.05, "csf": 0.9, "gm": 0.8, "wm": 0.62},
}


def _grid(shape: Sequence[int]) -> np.ndarray:
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _ellipsoid(
    coords: np.ndarray, center: np.ndarray, radii: np.ndarray, angle: float, edge: float
) -> np.ndarray:
    """Soft indicator (partial volume over about ``edge``) of a rotated ellipsoid."""
    d = coords - center.astype(np.float32).reshape(-1, *([1] * (coords.ndim - 1)))
    c, s = np.cos(angle), np.sin(angle)
    d0, d1 = c * d[0] + s * d[1], -s * d[0] + c * d[1]  # rotation in the axial plane
    radii = radii.astype(np.float32)
    q = (d0 / radii[0]) ** 2 + (d1 / radii[1]) ** 2
    for k in range(2, coords.shape[0]):
        q = q + (d[k] / radii[k]) ** 2
    return np.clip((1.0 - np.sqrt(q)) / edge + 0.5, 0.0, 1.0)


def _smooth_field(coords: np.ndarray, rng: np.random.Generator, order: int, amplitude: float) -> np.ndarray:
    """Random low-order polynomial in the coordinates, scaled to about +-amplitude."""
    field = np.zeros(coords.shape[1:], dtype=np.float32)
    for k in range(coords.shape[0]):
        for p in range(1, order + 1):
            field += rng.normal(0.0, 1.0) * coords[k] ** p / p
    if coords.shape[0] >= 2:
        field += rng.normal(0.0, 0.5) * coords[0] * coords[1]
    peak = float(np.abs(field).max()) or 1.0
    return field * (amplitude / peak)


def head_phantom(
    shape: Sequence[int],
    seed: int = 0,
    complex_valued: bool = False,
    noise: float | None = None,
    contrast: str | None = None,
) -> np.ndarray:
    """A head-like phantom of ``shape`` (2 or 3 axes) drawn from ``seed``.

    Returns a float32 magnitude image (Rician noise), or complex64 with a smooth phase if ``complex_valued``.
    ``noise`` is the standard deviation of the complex noise relative to the brightest tissue (random in
    [0.01, 0.04] when None); ``contrast`` is one of ``t1``, ``t2``, ``pd`` (random when None).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 4:
        raise ConfigError(f"head_phantom needs a 2D or 3D shape with every side >= 4, got {shape}.")
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    coords = _grid(shape)
    edge = 2.0 / min(shape)  # about one voxel of partial volume
    tissue = dict(CONTRASTS[contrast or rng.choice(list(CONTRASTS))])
    tissue = {k: v * rng.uniform(0.9, 1.1) for k, v in tissue.items()}

    center = rng.uniform(-0.05, 0.05, ndim)
    radii = np.array([0.72, 0.86, 0.8][:ndim]) * rng.uniform(0.88, 1.06, ndim)
    angle = rng.uniform(-0.2, 0.2)
    scalp, skull = rng.uniform(0.04, 0.07), rng.uniform(0.05, 0.09)
    csf_rim = rng.uniform(0.02, 0.05)

    head = _ellipsoid(coords, center, radii, angle, edge)
    inside_scalp = _ellipsoid(coords, center, radii - scalp, angle, edge)
    brain = _ellipsoid(coords, center, radii - scalp - skull, angle, edge)
    cortex = _ellipsoid(coords, center, radii - scalp - skull - csf_rim, angle, edge)
    white = _ellipsoid(
        coords, center, (radii - scalp - skull - csf_rim) * rng.uniform(0.6, 0.75), angle, edge
    )

    img = tissue["fat"] * (head - inside_scalp) + tissue["bone"] * (inside_scalp - brain)
    img += tissue["csf"] * (brain - cortex) + tissue["gm"] * (cortex - white) + tissue["wm"] * white

    # ventricles: a left-right pair near the centre, filled with CSF
    vent_r = np.array([0.08, 0.22, 0.14][:ndim]) * rng.uniform(0.6, 1.4, ndim)
    offset = rng.uniform(0.06, 0.12)
    for side in (-1.0, 1.0):
        c = center.copy()
        c[0] += side * offset
        if ndim == 3:
            c[2] += rng.uniform(0.0, 0.12)
        v = _ellipsoid(coords, c, vent_r, angle + side * rng.uniform(0.0, 0.25), edge)
        img = img * (1 - v) + tissue["csf"] * v

    # lesions: small blobs inside the brain, brighter or darker than their surroundings
    inner = (radii - scalp - skull - csf_rim) * 0.7
    for _ in range(rng.integers(0, 4)):
        c = center + rng.uniform(-1, 1, ndim) * inner / np.sqrt(ndim)
        r = rng.uniform(0.04, 0.12) * rng.uniform(0.7, 1.3, ndim)
        les = _ellipsoid(coords, c, r, rng.uniform(0, np.pi), edge) * cortex
        img = img * (1 - les) + rng.uniform(0.05, 1.0) * les

    # fine anatomy-like texture inside the brain, then a smooth multiplicative bias field
    sigma = max(1.0, min(shape) / 32)
    texture = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    texture *= 0.04 / (float(texture.std()) or 1.0)
    img = img * (1 + texture * brain)
    img = img * np.exp(_smooth_field(coords, rng, order=2, amplitude=rng.uniform(0.05, 0.25)))

    phase = _smooth_field(coords, rng, order=2, amplitude=rng.uniform(0.3, np.pi)) + rng.uniform(
        -np.pi, np.pi
    )
    sigma_n = rng.uniform(0.01, 0.04) if noise is None else float(noise)
    real = img * np.cos(phase) + sigma_n * rng.standard_normal(shape, dtype=np.float32)
    imag = img * np.sin(phase) + sigma_n * rng.standard_normal(shape, dtype=np.float32)
    if complex_valued:
        return (real + 1j * imag).astype(np.complex64)
    return np.hypot(real, imag).astype(np.float32)
