"""Audio restoration jobs on whole recordings: denoising, declipping and bandwidth extension.

The recording is resampled to the model's rate and each channel is restored as its own signal. One gain
per recording maps it into the model's range as training did (peak at ``datamodule.peak_level``); for
declipping the clip level maps to half of that, leaving room for the peaks the clipping cut off. Results are
written as 32-bit float WAV, so restored peaks above full scale are kept rather than clipped again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import src.tools.restoration.baselines as baselines  # the module, not the package
from src.env_check import import_torchaudio
from src.errors import ConfigError, DataError
from src.fileio import read_audio, sibling, write_audio

from .noise import estimate_noise_std
from .operators import LowPass, clip
from .problem import Problem
from .scores import audio_metrics

DECLIP_HEADROOM = 0.5   # the clip level maps to this share of the training peak level


@dataclass
class AudioJob:
    problem: Problem
    measured: np.ndarray                  # (C, L) at the model's rate, file units
    reference: np.ndarray | None
    rate: int
    gain: float                           # model units per file unit
    noise_std: float = 0.0                # file units
    notes: list[str] = field(default_factory=list)

    def from_model(self, x: torch.Tensor) -> np.ndarray:
        return (x[:, 0].cpu().numpy() / self.gain).astype(np.float32)

    def baseline(self) -> tuple[str, np.ndarray]:
        if self.problem.task == "denoise":
            return "wiener", baselines.wiener(self.measured, self.noise_std)
        return "identity", self.measured.copy()

    def write(self, out, result: np.ndarray, baseline: tuple[str, np.ndarray]) -> list:
        paths = [write_audio(result, self.rate, out), write_audio(self.measured, self.rate, sibling(out, "input"))]
        if baseline[0] != "identity":
            paths.append(write_audio(baseline[1], self.rate, sibling(out, baseline[0])))
        return paths

    def metrics(self, result: np.ndarray, baseline: tuple[str, np.ndarray]) -> dict:
        ref = self.reference
        if ref.shape[0] != result.shape[0]:
            raise DataError(f"The reference has {ref.shape[0]} channels but the result has {result.shape[0]}; pass "
                            "the clean version of the same recording.")
        n = min(ref.shape[-1], result.shape[-1])
        if abs(ref.shape[-1] - result.shape[-1]) > max(16, 0.01 * n):
            raise DataError(f"The reference lasts {ref.shape[-1] / self.rate:.3f} s but the input "
                            f"{result.shape[-1] / self.rate:.3f} s; pass the clean version of the same recording.")
        ref, cut = ref[:, :n], (lambda a: a[:, :n])
        out = {"diffusion": audio_metrics(ref, cut(result)), baseline[0]: audio_metrics(ref, cut(baseline[1]))}
        if baseline[0] != "identity":
            out["input"] = audio_metrics(ref, cut(self.measured))
        return out


def load(path, rate: int, what: str = "Input") -> tuple[np.ndarray, list[str]]:
    wave, file_rate = read_audio(path, what)
    notes = []
    if file_rate != rate:
        ta = import_torchaudio()
        wave = ta.functional.resample(torch.from_numpy(wave), file_rate, rate).numpy()
        notes.append(f"{what.lower()} resampled from {file_rate} Hz to the model's {rate} Hz")
    return wave.astype(np.float32), notes


def prepare(prior, *, task: str, input: str | Path, reference: str | Path | None = None, simulate: bool = False,
            noise_std: float | None = None, clip_level: float | None = None, cutoff: float | None = None,
            seed: int = 0) -> AudioJob:
    """The job of restoring the recording ``input`` with ``prior``: its problem in model space and baseline.

    ``task``: denoise (``noise_std`` in full-scale units; estimated when None), declip (``clip_level``, full
    scale = 1) or bandwidth (``cutoff`` in Hz). ``reference``: the clean recording for the metrics.
    ``simulate``: ``input`` is clean; it is damaged first (with ``seed``) and is the reference."""
    data = prior.data
    rate = int(data.get("sample_rate", 16000))
    peak_level = float(data.get("peak_level", 0.95))
    wave, notes = load(input, rate)
    if reference:
        reference, more = load(reference, rate, "Reference")
        notes += more
    else:
        reference = None
    rng = np.random.default_rng(seed)
    if simulate:
        reference = wave.copy()
    peak = float(np.abs(wave).max())
    if peak <= 1e-6:
        raise DataError(f"Input {input} is silent (peak {peak:.2g}); there is nothing to restore.")
    keep = sign = None
    level = band = noise = 0.0
    if task == "declip":
        if clip_level is None:
            raise ConfigError("--task declip needs --clip-level L, the level (full scale = 1) the recording clips at.")
        level = float(clip_level)
        if not 0 < level <= 1:
            raise ConfigError(f"--clip-level {level:g} lies outside the data range (0, 1] of full scale; pass the "
                              "level the recording clips at, e.g. 0.5.")
        if simulate:
            if level >= peak:
                raise ConfigError(f"--clip-level {level:g} is at or above the input's peak {peak:.3f}, so nothing "
                                  "would be clipped; pass a level below the peak.")
            wave = clip(wave, level)
        elif peak < level * (1 - 1e-3):
            raise ConfigError(f"--clip-level {level:g} lies above the data range of {input} (peak "
                              f"{peak:.4f}), so no sample is clipped there; pass the level it clips at.")
        gain = DECLIP_HEADROOM * peak_level / level
        clipped = np.abs(wave) >= level * (1 - 1e-3)
        keep = torch.from_numpy(~clipped)[:, None]
        sign = torch.from_numpy(np.sign(wave).astype(np.float32))[:, None]
        level = level * gain
        notes.append(f"{clipped.mean():.1%} of the samples are clipped at +-{clip_level:g}")
    elif task == "bandwidth":
        if cutoff is None:
            raise ConfigError("--task bandwidth needs --cutoff HZ, the frequency above which the recording is empty.")
        if not 0 < cutoff < rate / 2:
            raise ConfigError(f"--cutoff {cutoff:g} Hz must lie between 0 and the model's Nyquist frequency "
                              f"{rate / 2:g} Hz.")
        band = float(cutoff) / (rate / 2)
        if simulate:
            wave = LowPass(band).forward(torch.from_numpy(wave)).numpy()
        gain = peak_level / float(np.abs(wave).max())
    else:
        if simulate:
            if noise_std is None:
                raise ConfigError("--simulate --task denoise needs --noise-std S (the noise to add, full scale = 1).")
            wave = (wave + rng.normal(0, noise_std, wave.shape)).astype(np.float32)
        gain = peak_level / float(np.abs(wave).max())
        noise = noise_std
        if noise is None:
            noise = estimate_noise_std(torch.from_numpy(wave))
            notes.append(f"estimated noise std {noise:.4g} of full scale (pass --noise-std to set it)")
        if noise <= 0:
            raise ConfigError(f"--noise-std must be above 0 for denoising, got {noise}.")
    y = torch.from_numpy(wave * gain)[:, None]
    problem = Problem(task, y, (wave.shape[-1],), noise_std=noise * gain, keep=keep, sign=sign, level=level,
                      cutoff=band)
    return AudioJob(problem, wave.astype(np.float32), reference, rate, gain, noise, notes)
