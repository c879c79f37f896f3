"""Exponential moving average of a network's weights, with warm-up.

The average lives in a frozen copy of the network, registered as a sub-module, so it is saved in and
restored from checkpoints with everything else. Updates are elementwise on whatever tensor each rank
holds: under FSDP2 that is the local shard of a DTensor, so no full-model gather is ever needed.
Lightning's WeightAveraging cannot work on sharded models, hence this small class.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from src.errors import ConfigError


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: the local shard of a DTensor, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _reshard(module: nn.Module) -> None:
    """Return FSDP2 units that a forward pass left gathered (reshard_after_forward=False) to their shards."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule  # optional heavy dependency: torch.distributed (some builds lack it)

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


class EMA(nn.Module):
    """EMA with the warm-up schedule ``decay_n = min(decay, 1 - (1 + n / inv_gamma) ** -power)``.

    With ``warmup`` on, the first update copies the weights and the effective horizon grows with
    the number of updates n (the schedule used by diffusers' EMAModel and many DDPM codebases).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, inv_gamma: float = 1.0,
                 power: float = 2 / 3):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1], got {decay}.")
        self.decay, self.warmup, self.inv_gamma, self.power = decay, warmup, inv_gamma, power
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._n: int | None = 0  # host-side mirror of num_updates, so updates never sync with the GPU

    def decay_at(self, n: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + n / self.inv_gamma) ** -self.power)

    @property
    def updates(self) -> int:
        if self._n is None:
            self._n = int(self.num_updates.item())
        return self._n

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = self.updates
        weight = 1.0 - self.decay_at(n)
        _reshard(self.module)
        ema_params = [_local(p) for p in self.module.parameters()]
        params = [_local(p).detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA and model have different parameter lists; "
                               "was the model changed after the EMA was made?")
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], weight)
        for e, b in zip(self.module.buffers(), model.buffers()):
            _local(e).copy_(_local(b))
        self.num_updates.add_(1)
        self._n = n + 1

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._n = None  # re-read the restored counter on next use

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
