"""Posterior sampling of a restoration problem with a trained prior, tile by tile.

    from src.tools.restoration import Restorer
    restorer = Restorer.from_checkpoint("last.ckpt", device="cpu", steps=50)
    x = restorer.restore(problem, seed=0)           # (N, C, *out_shape) in model space

Each tile is sampled by ``src.inverse.sample_posterior`` with the problem's data step: the exact projection
for noiseless measurements, the noise-aware proximal step (``src.inverse.proximal_consistency``) otherwise.
A few-step student (``src/distill``) samples on its own 1-4 step grid (``--steps`` one of those it was made for);
a consistency student re-noises each consistent estimate afresh (multistep consistency sampling).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from src.errors import ConfigError
from src.inverse import denoiser_error_std, proximal_consistency, sample_posterior

from ..prior import Prior
from ..tiling import Tiling, blend
from .problem import Problem


class Restorer:
    def __init__(self, prior: Prior, steps: int | None = None, eta: float = 0.85, batch_size: int = 16,
                 overlap: float = 0.25, cg_iters: int = 10):
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"--eta must be between 0 and 1, got {eta}.")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"--overlap must be at least 0 and below 1, got {overlap}.")
        self.prior, self.eta, self.overlap, self.cg_iters = prior, float(eta), float(overlap), int(cg_iters)
        self.batch_size = max(1, int(batch_size))
        self.sigmas = prior.sigmas(steps)
        self.steps = len(self.sigmas) - 1

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", use_ema: bool = True, **options) -> Restorer:
        return cls(Prior.from_checkpoint(path, ("image", "audio"), "restoration", device, use_ema), **options)

    def tiling(self, problem: Problem) -> Tiling:
        tile = self.prior.spatial
        if problem.scale > 1 and any(t % problem.scale for t in tile):
            raise ConfigError(f"--scale {problem.scale} does not divide the model's tile size "
                              f"{'x'.join(map(str, tile))}; use a scale that divides it (2 or 4).")
        return Tiling(problem.out_shape, tile, self.overlap, align=problem.scale)

    @torch.no_grad()
    def restore(self, problem: Problem, seed: int = 0, progress: bool = False) -> torch.Tensor:
        tiling = self.tiling(problem)
        n_signals, channels = problem.y.shape[0], problem.y.shape[1]
        if channels != self.prior.channels:
            raise ConfigError(f"The problem has {channels}-channel signals but the model expects "
                              f"{self.prior.channels}.")
        items = [(n, region) for n in range(n_signals) for region in tiling.regions()]
        device = self.prior.device
        den = self.prior.denoiser()
        sig = [float(s) for s in self.sigmas]
        results: list[list] = [[] for _ in range(n_signals)]
        bar = _progress(len(items), progress)
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            op, y = problem.crop(chunk, device)
            g = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + start)

            def step(x0, i, op=op, y=y):
                if problem.noise_std > 0:
                    return proximal_consistency(op, x0, y, problem.noise_std, denoiser_error_std(sig[i]),
                                                self.cg_iters)
                return op.data_consistency(x0, y, self.cg_iters)

            shape = (len(chunk), channels, *(r.stop - r.start for r in chunk[0][1]))
            x = torch.randn(shape, generator=g, device=device) * sig[0]
            out = sample_posterior(den, x, self.sigmas, step, eta=self.eta, generator=g,
                                   fresh_noise=self.prior.fresh_noise)
            for (n, region), tile in zip(chunk, out):
                results[n].append((region, tile))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        full = torch.stack([blend(tiling, (channels,), r) for r in results])
        return problem.finalize(full)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, unit="tile", desc="restoring", dynamic_ncols=True)
