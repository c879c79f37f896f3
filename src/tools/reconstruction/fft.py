"""Old import path of the centred FFTs: they live in ``src.domains.mri.fft`` (training uses them too)."""

from src.domains.mri.fft import fft2c, ifft2c, rss

__all__ = ["fft2c", "ifft2c", "rss"]
