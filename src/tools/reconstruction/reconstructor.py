"""Diffusion-prior MRI reconstruction: a trained slice model + undersampled k-space -> image.

Intensity convention: the model was trained on images in [-1, 1]. Each volume's zero-filled image gives
a scale ``s = robust_max`` (99.5th percentile of its magnitude by default); a 1-channel (magnitude) model
sees ``2 |x| / s - 1``, a 2-channel (real, imaginary) model sees ``(Re x, Im x) / s``. Results are mapped
back by the same ``s``, so the output is in the units of the zero-filled image.

A magnitude model cannot represent phase, so the phase comes from the data: that of the low-resolution
image of the fully sampled k-space centre (smooth, free of aliasing), kept fixed during sampling. The
final image is the data-consistent complex estimate of the last step, so the measured samples are exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from src.backbones import size_multiple
from src.checkpoint import CheckpointError
from src.domains.mri.data import INTENSITY_SCALING
from src.domains.mri.geometry import Geometry, Reorientation, calibration_reference, match
from src.env_check import native_cpu_bf16, resolve_device
from src.errors import ConfigError, DataError
from src.inverse.sampler import RESAMPLE_SIGMAS, sample_posterior
from src.inverse.tv import tv_refine
from src.latent.stage import module_from_checkpoint, require_pixel_space
from src.options import COUNT

from ..prior import is_consistency_student
from .masks import center_region, centre_hann_window
from .measurement import Measurement, as_measurement, robust_max, zero_filled


@dataclass
class Reconstruction:
    image: np.ndarray            # (S, H, W) magnitude; the mean over samples when num_samples > 1, TV-refined
                                 # when refine_tv > 0
    std: np.ndarray | None       # (S, H, W) per-voxel standard deviation over samples (num_samples > 1)
    complex_image: np.ndarray    # (S, H, W) complex: the refined image when refine_tv > 0, else the first
                                 # sample; exactly what the consistency check measures
    zero_filled: np.ndarray      # (S, H, W) baseline on the same input
    scale: float
    seconds: float


class MagnitudeAdapter:
    """Model space ``(B, 1, H, W)`` magnitude in [-1, 1] <-> complex image with a fixed, smooth phase.

    The phase is that of the low-resolution image of the fully sampled centre and stays fixed, so the
    model's magnitude is tied to the data through a linear map (letting the phase follow the iterates
    lets it absorb the missing data and the magnitude drift away from it).
    """

    def __init__(self, scale: float, init: torch.Tensor):
        self.scale = scale
        self.phase = torch.where(init.abs() > 0, init / init.abs().clamp_min(1e-30), torch.ones_like(init))

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return ((x[:, 0] + 1) / 2).clamp_min(0) * self.scale * self.phase

    def to_model(self, c: torch.Tensor) -> torch.Tensor:
        mag = (c * self.phase.conj()).real.clamp_min(0)  # the component along the phase
        return (2 * mag / self.scale - 1)[:, None]


class ComplexAdapter:
    """Model space ``(B, 2, H, W)`` = (real, imaginary) / scale <-> complex image."""

    def __init__(self, scale: float, init: torch.Tensor | None = None):
        self.scale = scale

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.complex(x[:, 0], x[:, 1]) * self.scale

    def to_model(self, c: torch.Tensor) -> torch.Tensor:
        return torch.stack([c.real, c.imag], dim=1) / self.scale


def calibration_window(mask: torch.Tensor) -> torch.Tensor:
    """Hann window over the fully sampled centre columns (all sampled columns when there is no centre)."""
    columns = mask.all(dim=-2).reshape(-1, mask.shape[-1]).all(dim=0)
    lo, hi = center_region(columns)
    if hi - lo < 2:
        return mask.float()
    return centre_hann_window(columns)


def check_model(module, run_config: dict | None, name: str) -> None:
    """A slice model of the MRI domain, or a CheckpointError saying what kind of model this is instead."""
    domain = (run_config.get("domain") or {}).get("name") if run_config is not None else "mri"
    if domain != "mri":  # run_config None: a module handed over in Python, trusted to be an MRI model
        raise CheckpointError(f"Checkpoint {name} is a model of the '{domain}' domain, not MRI; "
                              "reconstruction needs a checkpoint trained with `python -m src.train "
                              "domain=mri datamodule.mode=slice`.")
    shape = list(module.data_shape)
    if len(shape) != 3:
        mode = ((run_config or {}).get("datamodule") or {}).get("mode", "volume")
        raise CheckpointError(f"Checkpoint {name} is a {len(shape) - 1}D model (data shape {shape}, mode "
                              f"{mode}); reconstruction works slice by slice and needs a 2D slice model: "
                              "train one with domain=mri datamodule.mode=slice.")
    if shape[0] not in (1, 2):
        raise CheckpointError(f"Checkpoint {name} models {shape[0]}-channel slices; reconstruction needs 1 "
                              "channel (magnitude) or 2 channels (real, imaginary).")
    data = (run_config or {}).get("datamodule") or {}
    if data.get("mode", "slice") != "slice":
        raise CheckpointError(f"Checkpoint {name} was trained with datamodule.mode={data['mode']}; "
                              "reconstruction needs a slice model: train with domain=mri datamodule.mode=slice.")
    scaling = data.get("intensity_scaling", INTENSITY_SCALING)
    if scaling != INTENSITY_SCALING:
        raise CheckpointError(f"Checkpoint {name} scales intensities by '{scaling}', which reconstruction "
                              f"cannot invert; it needs models trained with the '{INTENSITY_SCALING}' "
                              "convention of the mri domain (docs/design/mri.md).")


class Reconstructor:
    """Posterior sampling with a trained diffusion prior and k-space data consistency at every step.

    ``steps`` sampler steps (default: the model's ``diffusion.steps``); ``eta`` is DDIM's noise level
    (0: deterministic); ``cg_iters`` conjugate-gradient iterations per data step (multi-coil; single-coil
    uses the exact projection). ``batch_size`` slices (times samples) run through the network at once.
    ``refine_tv`` > 0: the complex mean of the samples is refined by ``src.inverse.tv.tv_refine`` with that TV
    weight (relative to the intensity scale ``s``), keeping the measured data exact (default: the checkpoint's
    ``reconstruction.refine_tv``, else 0, off). ``precision``: ``fp32``, ``bf16`` (the network under bf16 autocast;
    the data steps stay fp32/complex64) or ``auto`` (bf16 on GPUs and on CPUs with native bf16, else fp32);
    default: the checkpoint's ``reconstruction.precision``, else fp32. ``resample`` > 0 repeats each sampler step
    whose noise level lies in ``resample_sigmas`` that many more times (time travel, ``src.inverse.sampler``):
    better agreement between the measured and the unmeasured part for ``1 + resample`` times the network calls
    on those steps (default: the checkpoint's ``reconstruction.resample`` / ``resample_sigmas``, else 0, off).
    """

    def __init__(self, module, run_config: dict | None = None, device: str | torch.device = "cpu",
                 steps: int | None = None, eta: float | None = None, cg_iters: int = 5, batch_size: int = 8,
                 use_ema: bool = True, allow_resolution_mismatch: bool = False,
                 intensity_percentile: float | None = None, name: str = "model", geometry: dict | None = None,
                 refine_tv: float | None = None, precision: str | None = None, resample: int | None = None,
                 resample_sigmas: tuple[float, float] | None = None):
        check_model(module, run_config, name)
        # the grid and intensity contract of a recon_prior checkpoint (src/geometry.py); None for older ones
        self.geometry = Geometry.from_dict(geometry) if geometry else None
        self.reorientation = Reorientation()
        self.grid_checked = False  # orient() accepted the input's grid: its matrix may differ from training's
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.name = name
        self.steps = int(steps or module.diffusion_cfg.get("steps") or 50)
        # the defaults the training config chose for this prior (experiment=recon_prior: docs/studies/reconstruction.md)
        tuned = dict((run_config or {}).get("reconstruction") or {})
        self.fresh_noise = is_consistency_student(module)  # a few-step student (src/distill): its own grid
        if getattr(module, "distill_cfg", None):
            tuned.pop("resample", None)  # the teacher's time travel is tuned for its own many steps
        self.eta = float(eta if eta is not None else tuned.get("eta", 0.85))
        self.num_samples = int(tuned.get("num_samples", 1))
        self.refine_tv = float(refine_tv if refine_tv is not None else tuned.get("refine_tv", 0.0))
        self.resample = int(resample if resample is not None else tuned.get("resample", 0))
        lo, hi = (float(v) for v in (resample_sigmas if resample_sigmas is not None
                                      else tuned.get("resample_sigmas", RESAMPLE_SIGMAS)))
        self.resample_sigmas = (lo, hi)
        self.cg_iters, self.batch_size = int(cg_iters), int(batch_size)
        self.precision = resolve_network_precision(precision or tuned.get("precision", "fp32"), self.device)
        self.use_ema, self.allow_resolution_mismatch = use_ema, allow_resolution_mismatch
        trained = ((run_config or {}).get("datamodule") or {}).get("intensity_percentile", 99.5)
        self.data_config = dict((run_config or {}).get("datamodule") or {})
        self.percentile = float(intensity_percentile if intensity_percentile is not None else trained)
        self.channels = int(module.data_shape[0])
        self.factor = size_multiple(module.backbone)
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}.")
        COUNT.check(batch_size, "--batch-size")  # -1 once gave an all-zero image and a success
        COUNT.check(cg_iters, "--cg-iters")
        module.objective.sampling_sigmas(self.steps)  # a student refuses a step count it was not made for
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"--eta must be between 0 and 1, got {self.eta}.")
        if not 0.0 <= self.refine_tv <= 10.0:
            raise ConfigError(f"--refine-tv must be between 0 (off) and 10, got {self.refine_tv}.")
        if not 0 <= self.resample <= 20:
            raise ConfigError(f"--resample must be between 0 (off) and 20, got {self.resample}.")
        if not 0 < lo < hi:
            raise ConfigError(f"--resample-sigmas must be two noise levels 0 < LO < HI, got {lo:g} {hi:g}; "
                              f"the default is {RESAMPLE_SIGMAS[0]:g} {RESAMPLE_SIGMAS[1]:g}.")

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "auto", **options) -> Reconstructor:
        """Load safely (``weights_only``, model rebuilt from the checkpoint's own allow-listed config)."""
        dev = resolve_device(device)
        module, ckpt = module_from_checkpoint(path, device=dev)
        require_pixel_space(module, path, "MRI reconstruction")
        return cls(module, ckpt.get("run_config") or {}, device=dev, name=str(path),
                   geometry=ckpt.get("geometry"), **options)

    # ---- public API -----------------------------------------------------------------------------------
    def reconstruct(self, kspace, mask=None, num_samples: int | None = None, seed: int = 0) -> np.ndarray:
        """Magnitude image ``(S, H, W)`` (or ``(H, W)`` for a 2D k-space); see ``run`` for everything else."""
        image = self.run(kspace, mask, num_samples=num_samples, seed=seed).image
        return image[0] if len(kspace.shape) == 2 and not isinstance(kspace, Measurement) else image

    def run(self, kspace, mask=None, num_samples: int | None = None, seed: int = 0,
            progress: bool = False) -> Reconstruction:
        """``num_samples`` posterior samples (default: the checkpoint's ``reconstruction.num_samples``, else 1)
        whose mean is ``image``."""
        meas = kspace if isinstance(kspace, Measurement) else as_measurement(kspace, mask)
        self.check_resolution(meas.shape)
        num_samples = self.num_samples if num_samples is None else num_samples
        if num_samples < 1:
            raise ConfigError(f"--num-samples must be at least 1, got {num_samples}.")
        t0 = time.perf_counter()
        zf = zero_filled(meas)
        scale = self.intensity_scale(meas, zf)
        s_count, (h, w) = meas.num_slices, meas.shape
        items = [(s, k) for s in range(s_count) for k in range(num_samples)]
        mags = np.zeros((num_samples, s_count, h, w), dtype=np.float32)
        first = np.zeros((s_count, h, w), dtype=np.complex64)
        total = np.zeros((s_count, h, w), dtype=np.complex64)  # sum of the complex samples (refine_tv)
        bar = _progress(len(items), progress, num_samples)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            op, y = meas.batch([s for s, _ in chunk], self.device)
            g = torch.Generator(device=self.device).manual_seed(int(seed) * 1_000_003 + start)
            image = self._sample(op, y, scale, g).cpu()
            for j, (s, k) in enumerate(chunk):
                mags[k, s] = image[j].abs().numpy()
                total[s] += image[j].numpy()
                if k == 0:
                    first[s] = image[j].numpy()
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        std = mags.std(axis=0, ddof=1) if num_samples > 1 else None
        image = mags.mean(axis=0)
        if self.refine_tv > 0:
            first = self._refine(meas, total / num_samples, scale)
            image = np.abs(first)
        return Reconstruction(image=image, std=std, complex_image=first, zero_filled=zf,
                              scale=scale, seconds=time.perf_counter() - t0)

    def orient(self, found: Geometry, what: str = "the input") -> Reorientation:
        """Check ``found`` (the input's grid) against the checkpoint's: the transpose/flips used from now on,
        or a GeometryError naming both grids. Models without a contract only get the size check."""
        if self.geometry is not None:
            found = Geometry(found.matrix, found.pixel_mm, found.axes, self.geometry.intensity)
            self.reorientation = match(self.geometry, found, what, same_matrix=False)
            self.grid_checked = True
        return self.reorientation

    def matrix_note(self, shape: tuple[int, int]) -> str | None:
        """A sentence when an accepted input's matrix differs from the training matrix (same pixel size)."""
        trained = tuple(int(v) for v in self.module.data_shape[1:])
        found = tuple(shape)[::-1] if self.reorientation.transpose else tuple(shape)
        if not self.grid_checked or found == trained:
            return None
        return (f"the input's matrix {found[0]}x{found[1]} differs from the training matrix {trained[0]}x{trained[1]} "
                "on the same pixel size: the convolutional prior runs on the input's field of view as it is")

    def intensity_scale(self, meas: Measurement, zf: np.ndarray) -> float:
        """``s`` of the checkpoint's intensity contract: from the measured k-space centre (recon_prior models)
        or, for older models, the percentile of the zero-filled volume."""
        if self.geometry is not None and self.geometry.intensity.get("reference") == "calibration":
            return calibration_reference(meas.kspace, self.geometry.intensity)
        return robust_max(zf, self.percentile)

    def check_resolution(self, shape: tuple[int, int]) -> None:
        trained = tuple(int(v) for v in self.module.data_shape[1:])
        if self.reorientation.transpose:
            shape = tuple(shape)[::-1]
        if tuple(shape) != trained and not (self.allow_resolution_mismatch or self.grid_checked):
            spacing, axis = self.data_config.get("spacing"), int(self.data_config.get("slice_axis", 2))
            in_plane = [s for a, s in enumerate(spacing or []) if a != axis]
            known = len(in_plane) == 2 and None not in in_plane
            pixels = f" of {in_plane[0]:g} x {in_plane[1]:g} mm pixels" if known else ""
            raise DataError(
                f"The model was trained on {trained[0]}x{trained[1]} slices{pixels} but the k-space slices are "
                f"{shape[0]}x{shape[1]}; use a model trained at this size, or pass "
                "--allow-resolution-mismatch (Python: allow_resolution_mismatch=True) to run the "
                "convolutional network at this size anyway (its quality at other sizes is not validated).")

    # ---- internals ------------------------------------------------------------------------------------
    def _denoiser(self):
        net = self.module.ema.module if self.use_ema else self.module.backbone
        denoise = self.module.objective.denoiser(net)
        # the training data lie in [-1, 1]; clamping the estimate keeps early, very noisy steps in range
        clip = self.module.diffusion_cfg.get("clip_denoised") or (-1.0, 1.0)
        f = self.factor
        bf16 = self.precision == "bf16"
        dev = self.device.type

        def den(x, sigma):
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                return denoise(x, sigma).float()

        turn = self.reorientation  # the input's grid -> the model's (a transpose and/or flips; src/geometry.py)

        def d(x, sigma):
            return turn.to_input(padded(turn.to_model(x), sigma))

        def padded(x, sigma):
            h, w = x.shape[-2:]
            ph, pw = (-h) % f, (-w) % f
            if ph or pw:  # the UNet needs sizes divisible by its downsampling factor: reflect-pad, then crop
                out = den(F.pad(x, (0, pw, 0, ph), mode="reflect"), sigma)[..., :h, :w]
            else:
                out = den(x, sigma)
            return out.clamp(*clip)

        return d

    @torch.no_grad()
    def _refine(self, meas: Measurement, mean: np.ndarray, scale: float) -> np.ndarray:
        """TV refinement of the complex sample mean, slice batch by slice batch (data kept exact)."""
        out = np.empty_like(mean)
        for start in range(0, meas.num_slices, self.batch_size):
            idx = list(range(start, min(start + self.batch_size, meas.num_slices)))
            op, y = meas.batch(idx, self.device)
            anchor = torch.from_numpy(mean[idx]).to(self.device) / scale
            out[idx] = (tv_refine(op, y / scale, anchor, self.refine_tv, cg_iters=self.cg_iters) * scale).cpu().numpy()
        return out

    @torch.no_grad()
    def _sample(self, op, y, scale: float, generator: torch.Generator) -> torch.Tensor:
        init = op.adjoint(y * calibration_window(op.mask))
        adapter = (MagnitudeAdapter if self.channels == 1 else ComplexAdapter)(scale, init)
        last: dict[str, torch.Tensor] = {}

        def step(x0: torch.Tensor, i: int) -> torch.Tensor:
            # keep the complex data-consistent estimate: the model space may not hold all of it (phase)
            last["image"] = op.data_consistency(adapter.to_image(x0), y, self.cg_iters)
            return adapter.to_model(last["image"])

        sigmas = self.module.objective.sampling_sigmas(self.steps)
        x = torch.randn((y.shape[0], self.channels, *y.shape[-2:]), generator=generator, device=self.device)
        sample_posterior(self._denoiser(), x * sigmas[0].item(), sigmas, step, eta=self.eta,
                         generator=generator, resample=self.resample, resample_sigmas=self.resample_sigmas,
                         fresh_noise=self.fresh_noise)
        return last["image"]


def resolve_network_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for the network's forward passes; ``auto``: bf16 on CUDA and on CPUs with native bf16
    (AMX / AVX512-BF16), where it is faster, else fp32."""
    if precision not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"--precision must be fp32, bf16 or auto, got {precision!r}.")
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16())
        return "bf16" if native else "fp32"
    return precision


def _progress(total: int, enabled: bool, num_samples: int):
    if not enabled:
        return None
    unit = "slice" if num_samples == 1 else "slice-sample"
    return tqdm(total=total, unit=unit, desc="reconstructing", dynamic_ncols=True)
