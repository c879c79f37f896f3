"""Anomaly detection with a diffusion prior: reconstruction maps from partial noising, and likelihoods."""

from .detector import Detector, anomaly_map, partial_sigmas
from .likelihood import bits_per_dim, log_likelihood
from .screen import ScreenOptions, screen_file

__all__ = ["Detector", "ScreenOptions", "anomaly_map", "bits_per_dim", "log_likelihood", "partial_sigmas",
           "screen_file"]
