"""Restoration with a diffusion prior: inpainting, super-resolution and denoising of images; denoising,
declipping and bandwidth extension of recordings (see ``src.restore`` for the command line)."""

from .operators import Declipping, Identity, LowPass, box_mask, clip
from .problem import AUDIO_TASKS, IMAGE_TASKS, TASKS, Problem
from .restorer import Restorer
from .workflow import RestoreOptions, restore_file

__all__ = ["AUDIO_TASKS", "IMAGE_TASKS", "TASKS", "Declipping", "Identity", "LowPass", "Problem", "RestoreOptions",
           "Restorer", "box_mask", "clip", "restore_file"]
