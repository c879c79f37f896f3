"""Old import path of the quality metrics (benchmarks use it): they live in ``src.tools.quality``."""

from src.tools.quality import all_metrics, nmse, psnr, ssim

__all__ = ["all_metrics", "nmse", "psnr", "ssim"]
