"""Toy scores: how far the generated series' dominant frequency and level are from the real ones."""

from __future__ import annotations

import torch


def dominant_cycles(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, L)`` -> the strongest non-zero frequency bin of each series' channel mean, ``(N,)``."""
    spectrum = torch.fft.rfft(x.mean(1), dim=-1).abs()
    return spectrum[:, 1:].argmax(-1).float() + 1


class SineMetrics:
    def __call__(self, generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        return {
            "cycles_gap": float((dominant_cycles(generated).mean() - dominant_cycles(real).mean()).abs()),
            "std_ratio": float(generated.std() / real.std().clamp_min(1e-8)),
        }
