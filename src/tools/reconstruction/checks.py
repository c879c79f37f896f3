"""Checks that keep a reconstruction from being silently worse than its baselines.

Per volume, ``volume_checks`` reports the data-consistency residual ``||M F x - y|| / ||y||`` and how far the
result moved from the zero-filled image ``||x - zf|| / ||zf||`` (a prior that changes nothing, or
everything, shows here).

``--method auto`` decides from the data themselves, by k-space cross-validation: a share of the measured
outer columns is held out, every candidate (diffusion, TV, zero-filled) reconstructs from the rest, and the
one that predicts the held-out measurements best is used on the full data. Zero-filled predicts zeros
there (error 1 by definition), so a prior that is out of its domain loses to the baselines and a warning
says so. (Hand-written: no installed library validates MRI reconstructions without a reference.)
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from src.domains.mri.geometry import GeometryError, geometry_from_affine
from src.inverse.tv import tv_reconstruct
from src.tools.reconstruction.masks import center_region
from src.tools.reconstruction.measurement import Measurement, robust_max, zero_filled


def _columns(meas: Measurement) -> torch.Tensor:
    """Columns sampled in every slice and row, ``(W,)`` bool."""
    m = meas.mask.expand(meas.mask.shape[0], *meas.shape)
    return m.all(dim=0).all(dim=0)


def _predict(meas: Measurement, image: np.ndarray, idx: list[int], columns: torch.Tensor):
    """Predicted and measured k-space of slices ``idx`` on ``columns`` (same shapes)."""
    op, y = meas.batch(idx, "cpu")
    op.mask = torch.zeros_like(op.mask) | columns  # the forward model on the chosen columns only
    x = torch.as_tensor(image[idx]).to(torch.complex64)
    return op.forward(x), y * (columns if y.ndim == 3 else columns.reshape(1, 1, 1, -1))


def data_residual(meas: Measurement, image: np.ndarray) -> float:
    """``||M F x - y|| / ||y||`` over the volume for a complex image ``(S, H, W)``."""
    num = den = 0.0
    for start in range(0, meas.num_slices, 16):
        idx = list(range(start, min(start + 16, meas.num_slices)))
        op, y = meas.batch(idx, "cpu")
        r = op.forward(torch.as_tensor(image[idx]).to(torch.complex64)) - y
        num += float(r.abs().pow(2).sum())
        den += float(y.abs().pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def volume_checks(meas: Measurement, complex_image: np.ndarray | None, image: np.ndarray,
                  zf: np.ndarray) -> dict:
    moved = float(np.linalg.norm(image - zf) / max(np.linalg.norm(zf), 1e-30))
    out = {"moved_from_zero_filled": round(moved, 6)}
    if complex_image is not None:
        out["data_residual"] = round(data_residual(meas, complex_image), 8)
    return out


def holdout(meas: Measurement, share: float = 0.25) -> tuple[Measurement, torch.Tensor]:
    """``meas`` without every ``1/share``-th measured column outside the fully sampled centre, and those."""
    cols = _columns(meas)
    lo, hi = center_region(cols)
    outer = [i for i in torch.nonzero(cols).flatten().tolist() if not lo <= i < hi]
    step = max(2, int(round(1 / share)))
    held = torch.zeros_like(cols)
    held[outer[step // 2::step]] = True
    if not bool(held.any()):
        return meas, held
    keep = meas.mask & ~held
    k = meas.kspace * (keep.unsqueeze(1) if meas.multicoil else keep)
    return Measurement(kspace=k, mask=keep), held


def holdout_error(meas: Measurement, held: torch.Tensor, complex_image: np.ndarray | None) -> float:
    """Relative error of the prediction of the held-out columns (1.0: no better than zeros)."""
    if complex_image is None:
        return 1.0
    num = den = 0.0
    for start in range(0, meas.num_slices, 16):
        idx = list(range(start, min(start + 16, meas.num_slices)))
        pred, y = _predict(meas, complex_image, idx, held)
        num += float((pred - y).abs().pow(2).sum())
        den += float(y.abs().pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


def tv_complex(meas: Measurement, lam: float, iters: int) -> np.ndarray:
    """The TV baseline's complex image ``(S, H, W)`` (``measurement.compressed_sensing`` keeps magnitudes)."""
    scale = robust_max(zero_filled(meas))
    out = []
    for start in range(0, meas.num_slices, 16):
        idx = list(range(start, min(start + 16, meas.num_slices)))
        op, y = meas.batch(idx, "cpu")
        x = tv_reconstruct(op, y / scale, op.adjoint(y / scale), lam=lam, iters=iters)
        out.append(x * scale)
    return torch.cat(out).numpy()


def pick_slices(meas: Measurement, count: int) -> Measurement:
    """Up to ``count`` slices spread over the volume (the cross-validation need not see all of them)."""
    if meas.num_slices <= count:
        return meas
    idx = np.linspace(0, meas.num_slices - 1, count).round().astype(int).tolist()
    mask = meas.mask[idx] if meas.mask.shape[0] > 1 else meas.mask
    return Measurement(kspace=meas.kspace[idx], mask=mask)


# ---- the workflow's use of these checks (src.tools.reconstruction.workflow) -----------------------------
def check_geometry(reconstructor, meas: Measurement, affine, input_name: str = "the input",
                   method: str = "diffusion"):
    """The input's grid against the checkpoint's contract: reoriented (a note), refused, or with
    ``method="auto"`` dropped for the baselines (a warning). Returns (reconstructor or None, summary entry)."""
    found = geometry_from_affine(affine, meas.shape)
    if reconstructor.geometry is None:
        return reconstructor, None
    try:
        turn = reconstructor.orient(found, what=f"--input {input_name}")
    except GeometryError as e:
        if method != "auto":
            raise
        print(f"warning: {e} --method auto falls back to the baselines.", file=sys.stderr)
        return None, {"model": reconstructor.geometry.describe(), "input": found.describe(),
                      "reorientation": None}
    if not turn.identity:
        print(f"note: the input ({found.describe()}) is reoriented onto the model's grid "
              f"({reconstructor.geometry.describe()}): {turn.describe()}; the output keeps the input's grid",
              file=sys.stderr)
    note = reconstructor.matrix_note(meas.shape)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return reconstructor, {"model": reconstructor.geometry.describe(), "input": found.describe(),
                           "reorientation": turn.describe(), "matrix": note or "as trained"}


def choose_method(reconstructor, meas: Measurement, cs_lambda: float = 0.01, cs_iters: int = 300,
                  seed: int = 0) -> tuple[str, dict]:
    """--method auto: the candidate (diffusion with ``reconstructor`` unless None, TV with ``cs_lambda`` and
    ``cs_iters``, zero-filled) that best predicts held-out measured columns."""
    sub = pick_slices(meas, 4)
    fit, held = holdout(sub)
    if not bool(held.any()):
        method = "diffusion" if reconstructor is not None else "cs"
        print(f"warning: too few measured columns to cross-validate; --method auto uses {method}.",
              file=sys.stderr)
        return method, {"held_out_columns": 0}
    errors = {"zero-filled": 1.0, "cs": holdout_error(sub, held, tv_complex(fit, cs_lambda, cs_iters))}
    if reconstructor is not None:
        trial = reconstructor.run(fit, num_samples=1, seed=seed)
        errors["diffusion"] = holdout_error(sub, held, trial.complex_image)
    method = min(errors, key=errors.get)
    if reconstructor is not None and method != "diffusion":
        print(f"warning: the diffusion prior predicts held-out measured k-space with a relative error of "
              f"{errors['diffusion']:.3f}, worse than {method} ({errors[method]:.3f}): it is out of its "
              f"domain for this scan, so --method auto uses {method}.", file=sys.stderr)
    return method, {"held_out_columns": int(held.sum()), "slices": sub.num_slices,
                    "errors": {k: round(v, 5) for k, v in errors.items()}, "chosen": method}
