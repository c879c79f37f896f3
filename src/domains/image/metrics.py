"""Sample quality for images: a Frechet distance on the features of a network, logged at every validation.

``ImageMetrics(feature_network=PATH)(generated, real)`` returns ``frechet_features``: the Frechet distance
between Gaussians fitted to the features of the generated and of the real items (the FID formula).

* ``feature_network``: a TorchScript file (``torch.jit.save``) of an image encoder read from a local path, such
  as an Inception-v3 pool or CLIP image tower, so runs report the field's FID (or FD-CLIP) when a user has one.
  It receives RGB images in [0, 1], ``(N, 3, S, S)`` with ``S = feature_resolution`` (null: the data's size;
  grey images repeated to 3 channels), and returns one feature vector per image (any shape, flattened).
* null (the default, weight-free): a fixed random convolutional network, drawn from seed 0 on the CPU, so every
  run and machine sees the same features: two 3x3 convolutions with ReLU (32 and 64 channels, the second after
  a 2x average pool), then the per-channel mean and standard deviation over the image (128 features). Random
  features rank generators by their statistics of local texture and contrast; the numbers are not FID.

With few items (a validation draws ``sampling.num``, 16 by default) the covariances are singular and the
distance is biased upwards; compare runs at equal ``metrics.num_samples``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.domains.common import frechet_distance
from src.errors import ConfigError


class RandomFeatures(nn.Module):
    """The weight-free default: fixed random convolutions (seed 0) and per-channel mean / std pooling."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(32, 3, 3, 3, generator=g) / 27 ** 0.5, requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(64, 32, 3, 3, generator=g) / 288 ** 0.5, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d(x * 2 - 1, self.w1, padding=1))
        h = F.relu(F.conv2d(F.avg_pool2d(h, 2) if min(h.shape[-2:]) >= 4 else h, self.w2, padding=1))
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)


def load_feature_network(path) -> torch.jit.ScriptModule:
    """A TorchScript module from a local file, or a ConfigError naming ``metrics.feature_network``."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"metrics.feature_network={path} is not a file; give the local path of a TorchScript image "
                          "encoder (saved with torch.jit.save) or leave it null for the built-in random features.")
    try:
        net = torch.jit.load(str(p), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"metrics.feature_network={path} is not a TorchScript file ({first}); save the encoder "
                          "with torch.jit.save(torch.jit.script(model), PATH) or torch.jit.trace.") from None
    return net.eval()


class ImageMetrics:
    """Callable ``(generated, real) -> {"frechet_features": float}`` (see the module docstring)."""

    def __init__(self, feature_network: str | None = None, feature_resolution: int | None = None):
        self.net = RandomFeatures() if feature_network in (None, "", "null") else load_feature_network(feature_network)
        if feature_resolution is not None and (isinstance(feature_resolution, bool) or int(feature_resolution) < 1):
            raise ConfigError(f"metrics.feature_resolution must be a positive whole number or null, got "
                              f"{feature_resolution!r}.")
        self.resolution = None if feature_resolution is None else int(feature_resolution)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().clamp(-1, 1) + 1) / 2)[:, :3]  # [-1, 1] -> [0, 1]; RGB
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.resolution is not None and tuple(x.shape[-2:]) != (self.resolution,) * 2:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.net(x).reshape(len(x), -1).double()

    def __call__(self, generated: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        if len(generated) < 2 or len(real) < 2:
            return {"frechet_features": float("nan")}
        fg, fr = self.features(generated), self.features(real)
        return {"frechet_features": frechet_distance(fg.mean(0), torch.cov(fg.T), fr.mean(0), torch.cov(fr.T))}
