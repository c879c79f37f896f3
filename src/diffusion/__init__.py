"""Domain-agnostic diffusion maths over tensors shaped ``(batch, channels, *spatial)``."""

from .objectives import OBJECTIVES, build_objective
from .samplers import SAMPLERS, clipped, get_sampler

__all__ = ["OBJECTIVES", "SAMPLERS", "build_objective", "clipped", "get_sampler"]
