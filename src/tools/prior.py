"""A trained checkpoint as a prior: the denoiser ``D(x, sigma)`` in model space plus what the tools must know.

Every tool loads its model here, so a checkpoint of the wrong domain or kind is refused in one sentence
before any file is read or any heavy work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from src.backbones import size_multiple
from src.checkpoint import CheckpointError
from src.env_check import resolve_device
from src.errors import ConfigError
from src.latent.stage import module_from_checkpoint, require_pixel_space


def is_consistency_student(module) -> bool:
    return (getattr(module, "distill_cfg", None) or {}).get("method") == "consistency"


@dataclass
class Prior:
    module: torch.nn.Module
    run_config: dict = field(default_factory=dict)
    name: str = "model"
    use_ema: bool = True

    @classmethod
    def from_checkpoint(cls, path, domains: tuple[str, ...], tool: str, device: str = "auto",
                        use_ema: bool = True) -> Prior:
        dev = resolve_device(device)
        module, ckpt = module_from_checkpoint(path, device=dev)
        prior = cls(module, ckpt.get("run_config") or {}, name=str(path), use_ema=use_ema)
        prior.check(domains, tool)
        return prior

    @property
    def domain(self) -> str | None:
        return (self.run_config.get("domain") or {}).get("name")

    @property
    def data(self) -> dict:
        return dict(self.run_config.get("datamodule") or {})

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def channels(self) -> int:
        return int(self.module.data_shape[0])

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.module.data_shape[1:])

    @property
    def student(self) -> dict | None:
        """The ``distill`` settings of a few-step student (``src/distill``); None for a diffusion model."""
        return getattr(self.module, "distill_cfg", None)

    @property
    def fresh_noise(self) -> bool:
        """A consistency student: posterior sampling re-noises each consistent estimate afresh
        (``src.inverse.sample_posterior``)."""
        return is_consistency_student(self.module)

    def check(self, domains: tuple[str, ...], tool: str) -> None:
        if self.domain not in domains:
            raise CheckpointError(f"Checkpoint {self.name} is a model of the '{self.domain}' domain; {tool} needs "
                                  f"a checkpoint of the {' or '.join(domains)} domain (python -m src.train "
                                  f"domain={domains[0]} ...).")
        require_pixel_space(self.module, self.name, tool)
        if self.data.get("mel_conditioning"):
            raise CheckpointError(f"Checkpoint {self.name} is a vocoder (datamodule.mel_conditioning=true); {tool} "
                                  "needs an unconditional model: train one without mel conditioning.")

    def sigmas(self, steps: int | None) -> torch.Tensor:
        steps = int(steps or self.module.diffusion_cfg.get("steps") or 50)
        if steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {steps}.")
        return self.module.objective.sampling_sigmas(steps)

    def denoiser(self, clamp: bool = True):
        """``D(x, sigma)`` on ``(B, C, *spatial)`` of any size (reflect-padded to the network's multiple)."""
        net = self.module.ema.module if self.use_ema else self.module.backbone
        den = self.module.objective.denoiser(net)
        clip = self.module.diffusion_cfg.get("clip_denoised") or (-1.0, 1.0)
        f = size_multiple(self.module.backbone)  # the backbone says which sizes it takes

        def d(x, sigma):
            pads = [(-n) % f for n in x.shape[2:]]
            if any(pads):
                pad = [p for n in reversed(pads) for p in (0, n)]
                crop = (slice(None), slice(None), *(slice(0, n) for n in x.shape[2:]))
                out = den(F.pad(x, pad, mode="reflect"), sigma)[crop]
            else:
                out = den(x, sigma)
            return out.clamp(*clip) if clamp else out

        return d
