"""Image restoration jobs: inpainting, super-resolution and denoising of PNG/JPEG/TIFF files.

Pixels in [0, 1] map to the model's [-1, 1] as in training (``2 p - 1``); ``--noise-std`` is in units of
the full intensity range (0.05 = 5 % of white, about 13 of 255).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import src.tools.restoration.baselines as baselines  # the module, not the package
from src.errors import ConfigError, DataError
from src.fileio import read_image, read_mask, sibling, write_image

from .noise import estimate_noise_std
from .operators import box_mask
from .problem import Problem
from .scores import image_metrics


@dataclass
class ImageJob:
    problem: Problem
    measured: np.ndarray                 # what the tool was given, (C, h, w) in [0, 1]
    reference: np.ndarray | None         # clean image for the metrics (--reference or --simulate)
    noise_std: float                     # in [0, 1] units
    holes: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        return ((x[0].cpu().numpy() + 1) / 2).clip(0, 1)

    def baseline(self) -> tuple[str, np.ndarray]:
        t = self.problem.task
        if t == "inpaint":
            return "biharmonic", baselines.biharmonic(self.measured, self.holes)
        if t == "super-resolution":
            return "bicubic", baselines.bicubic(self.measured, self.problem.scale)
        return "nl_means", baselines.nl_means(self.measured, self.noise_std)

    def write(self, out, result: np.ndarray, baseline: tuple[str, np.ndarray]) -> list:
        return [write_image(result, out), write_image(self.measured, sibling(out, "input")),
                write_image(baseline[1], sibling(out, baseline[0]))]

    def metrics(self, result: np.ndarray, baseline: tuple[str, np.ndarray]) -> dict:
        ref = self.reference
        if ref.shape != result.shape:
            raise DataError(f"The reference is {ref.shape[2]}x{ref.shape[1]} pixels ({ref.shape[0]} channels) but "
                            f"the result is {result.shape[2]}x{result.shape[1]} ({result.shape[0]}); pass the "
                            "clean version of the same image.")
        out = {"diffusion": image_metrics(ref, result), baseline[0]: image_metrics(ref, baseline[1])}
        if self.measured.shape == ref.shape:
            out["input"] = image_metrics(ref, self.measured)
        return out


def prepare(prior, *, task: str, input: str | Path, reference: str | Path | None = None, simulate: bool = False,
            mask: str | Path | None = None, mask_boxes: list[list[int]] | None = None, scale: int = 4,
            noise_std: float | None = None, seed: int = 0) -> ImageJob:
    """The job of restoring the image file ``input`` with ``prior``: its problem in model space and baseline.

    ``task``: inpaint (``mask``, a PNG white where pixels are missing, and/or ``mask_boxes`` of ``[x, y, w, h]``
    pixels), super-resolution (by ``scale``) or denoise (``noise_std`` in [0, 1] units; estimated when None).
    ``reference``: the clean image for the metrics. ``simulate``: ``input`` is clean; it is damaged first (with
    ``seed``) and is the reference."""
    channels = prior.channels
    image = read_image(input, channels)
    reference = read_image(reference, channels, "Reference") if reference else None
    notes = []
    rng = np.random.default_rng(seed)
    if simulate:
        reference = image
    holes = None
    if task == "inpaint":
        shape = image.shape[1:]
        holes = np.zeros(shape, dtype=bool)
        if mask:
            holes |= read_mask(mask, shape)
        if mask_boxes:
            holes |= box_mask(shape, mask_boxes)
        if not (mask or mask_boxes):
            raise ConfigError("--task inpaint needs --mask MASK.png (white = missing) or --mask-box X Y W H.")
        if not holes.any():
            raise DataError("The inpainting mask marks no pixel as missing; paint the missing region white "
                            "(--mask) or give a --mask-box inside the image.")
        if simulate:
            image = np.where(holes, 0.0, image).astype(np.float32)
        keep = torch.from_numpy(~holes)[None, None]
        y = torch.from_numpy(image * 2 - 1)[None] * keep
        problem = Problem(task, y, image.shape[1:], keep=keep)
    elif task == "super-resolution":
        s = scale
        if s < 2:
            raise ConfigError(f"--scale must be a whole number of at least 2, got {s}.")
        if simulate:
            h, w = image.shape[1:]
            if h % s or w % s:
                raise DataError(f"--simulate --scale {s}: the input is {w}x{h} pixels, which {s} does not divide; "
                                f"crop it to a multiple of {s} (e.g. {w // s * s}x{h // s * s}).")
            image = torch.nn.functional.avg_pool2d(torch.from_numpy(image)[None], s)[0].numpy()
        y = torch.from_numpy(image * 2 - 1)[None]
        out_shape = (image.shape[1] * s, image.shape[2] * s)
        if reference is not None and reference.shape[1:] != out_shape:
            raise DataError(f"The reference is {reference.shape[2]}x{reference.shape[1]} pixels but {s}x the input is "
                            f"{out_shape[1]}x{out_shape[0]}; the scale does not divide the reference into the "
                            "input's size: pass the matching --scale or reference.")
        problem = Problem(task, y, out_shape, scale=s)
    else:
        if simulate:
            if noise_std is None:
                raise ConfigError("--simulate --task denoise needs --noise-std S (the noise to add).")
            image = (image + rng.normal(0, noise_std, image.shape)).clip(0, 1).astype(np.float32)
        if noise_std is None:
            noise_std = estimate_noise_std(torch.from_numpy(image))
            notes.append(f"estimated noise std {noise_std:.4f} of full scale (pass --noise-std to set it)")
        if noise_std <= 0:
            raise ConfigError(f"--noise-std must be above 0 for denoising, got {noise_std}.")
        problem = Problem(task, torch.from_numpy(image * 2 - 1)[None], image.shape[1:], noise_std=2 * noise_std)
    return ImageJob(problem, image.astype(np.float32), reference, noise_std if task == "denoise" else 0.0, holes,
                    notes)
