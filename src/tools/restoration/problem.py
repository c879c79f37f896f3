"""A restoration problem in model space: measurements ``y``, the operator that made them, and its noise.

Signals are ``(N, C, *spatial)``: one image (N = 1) or the channels of a recording (N = channels, C = 1).
``crop`` gives the operator and measurements of a batch of tiles, so a recording of any length or an image
of any size runs through a model trained on fixed-size crops; ``finalize`` applies the data step once more
to the blended whole, so the measured part of the result is exact whatever the tiling did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.inverse import Downsampling, Inpainting, LinearOperator

from .operators import Declipping, Identity, LowPass

IMAGE_TASKS = ("inpaint", "super-resolution", "denoise")
AUDIO_TASKS = ("denoise", "declip", "bandwidth")
TASKS = {"image": IMAGE_TASKS, "audio": AUDIO_TASKS}


@dataclass
class Problem:
    task: str
    y: torch.Tensor                        # (N, C, *measured spatial), model space
    out_shape: tuple[int, ...]             # spatial shape of the result
    noise_std: float = 0.0                 # std of the measurement noise in model units (0: exact data)
    scale: int = 1                         # super-resolution factor
    keep: torch.Tensor | None = None       # inpaint / declip: True where a sample was measured exactly
    sign: torch.Tensor | None = None       # declip: sign of the clipped samples
    level: float = 0.0                     # declip: clip level in model units
    cutoff: float = 0.0                    # bandwidth: fraction of Nyquist kept by the recording

    def operator(self, keep=None, sign=None) -> LinearOperator:
        if self.task == "inpaint":
            return Inpainting(keep)
        if self.task == "super-resolution":
            return Downsampling(self.scale)
        if self.task == "declip":
            return Declipping(~keep, sign, self.level)
        if self.task == "bandwidth":
            return LowPass(self.cutoff)
        return Identity()

    def crop(self, items: list[tuple[int, tuple[slice, ...]]], device) -> tuple[LinearOperator, torch.Tensor]:
        """Operator and measurements of the tiles ``(signal index, region in output coordinates)``."""
        def stack(t, scale=1):
            return torch.stack([t[n][(slice(None), *(slice(r.start // scale, r.stop // scale) for r in reg))]
                                for n, reg in items]).to(device)

        y = stack(self.y, self.scale)
        keep = stack(self.keep) if self.keep is not None else None
        sign = stack(self.sign) if self.sign is not None else None
        return self.operator(keep, sign), y

    def finalize(self, x: torch.Tensor) -> torch.Tensor:
        """The exact data step on the whole signal (noiseless tasks); noisy data are left to the sampler."""
        if self.noise_std > 0:
            return x
        op = self.operator(self.keep, self.sign)
        return op.data_consistency(x, self.y, iters=10)
