"""User-facing tools built on a trained diffusion prior: restoration (src.restore), anomaly maps (src.anomaly)."""
