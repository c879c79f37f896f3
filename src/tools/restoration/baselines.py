"""Classical restorations, scored beside the diffusion prior by the same metrics.

* inpainting: biharmonic inpainting (scikit-image ``inpaint_biharmonic``);
* super-resolution: bicubic interpolation (scikit-image ``resize``, order 3);
* image denoising: non-local means (scikit-image ``denoise_nl_means`` with the noise std);
* audio denoising: a short-time Wiener filter for white noise of known std;
* declipping and bandwidth extension: the input itself (the clipped or low-passed recording).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.restoration import denoise_nl_means, inpaint_biharmonic
from skimage.transform import resize


def biharmonic(image: np.ndarray, holes: np.ndarray) -> np.ndarray:
    out = inpaint_biharmonic(image.transpose(1, 2, 0).astype(np.float64), holes, channel_axis=-1)
    return np.clip(out.transpose(2, 0, 1), 0, 1).astype(np.float32)


def bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    c, h, w = image.shape
    out = resize(image.astype(np.float64), (c, h * scale, w * scale), order=3, mode="edge", anti_aliasing=False)
    return np.clip(out, 0, 1).astype(np.float32)


def nl_means(image: np.ndarray, noise_std: float) -> np.ndarray:
    out = denoise_nl_means(image.transpose(1, 2, 0).astype(np.float64), h=0.8 * noise_std, sigma=noise_std,
                           patch_size=5, patch_distance=6, channel_axis=-1, fast_mode=True)
    return np.clip(out.transpose(2, 0, 1), 0, 1).astype(np.float32)


def wiener(wave: np.ndarray, noise_std: float, n_fft: int = 512) -> np.ndarray:
    """STFT-domain Wiener gain ``SNR / (1 + SNR)`` with the a-priori SNR by maximum likelihood (white noise).

    No installed library ships a noise-std-driven spectral Wiener filter, hence these lines.
    """
    x = torch.as_tensor(np.asarray(wave, np.float64))
    n_fft = min(n_fft, 2 ** int(np.log2(max(x.shape[-1], 16))))
    win = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(x, n_fft, n_fft // 4, window=win, return_complex=True)
    noise_power = noise_std**2 * float(win.pow(2).sum())
    snr = (spec.abs().pow(2) / max(noise_power, 1e-20) - 1).clamp_min(0)
    out = torch.istft(spec * (snr / (1 + snr)), n_fft, n_fft // 4, window=win, length=x.shape[-1])
    return out.numpy().astype(np.float32)
