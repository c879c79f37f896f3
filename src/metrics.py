"""Sample-quality metrics per domain, and the callback that computes them at each validation.

A domain's metrics class (``DOMAIN.metrics``) is built from the config's ``metrics:`` node, whose ``kind``
names the domain, and is called as ``metrics(generated, real) -> dict[str, float]`` on tensors shaped
``(N, C, *spatial)`` (the Fréchet distance they share is in ``src.domains.common``). ``MetricsCallback`` draws
EMA samples with ``module.sample`` and compares them with the first validation clips (fixed seed, so two
validations of one run, or two runs, see the same noise and data).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from .domains import parts
from .domains.common import frechet_distance
from .errors import positive_int

__all__ = ["CALLBACK_KEYS", "MetricsCallback", "build_metrics", "frechet_distance"]

log = logging.getLogger(__name__)

# keys of the `metrics:` node read by the callback; the others go to the metrics class
CALLBACK_KEYS = ("num_samples", "sampler", "steps", "batch_size")


def build_metrics(cfg: dict):
    """The metrics class of the domain named by ``metrics.kind``, built from the other keys of the node."""
    return parts("metrics", "metrics.kind").build(cfg, ignore=CALLBACK_KEYS)


class MetricsCallback(pl.Callback):
    """At the end of every validation, logs ``val/<name>`` for each score of the domain's metrics class.

    When validation batches carry ``cond`` (e.g. a mel spectrogram) the samples are drawn from those, so
    sample i corresponds to real item i. ``real_media`` (a media writer) is given only when the user allowed
    real images to be uploaded (``privacy.upload_real_images``); then the real items also go to W&B, once.
    """

    def __init__(self, metrics: dict, seed: int = 0, sampler: str | None = None, steps: int | None = None,
                 batch_size: int | None = None, real_media=None):
        cfg = dict(metrics)
        num = cfg.get("num_samples")
        self.num = 8 if num is None else int(num)  # 0 turns the metrics off
        if cfg.get("steps") is not None:
            positive_int(cfg["steps"], "metrics.steps")
        self.sampler, self.steps = cfg.get("sampler") or sampler, cfg.get("steps") or steps
        self.batch_size = cfg.get("batch_size") or batch_size
        self.seed, self.real_media = seed, real_media
        self.metrics = build_metrics(cfg)
        self._real: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._real_logged = False

    def _real_items(self, trainer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``num`` validation items (and their ``cond``), read once and kept on the CPU."""
        if self._real is None:
            xs, conds = [], []
            for batch in trainer.datamodule.val_dataloader():
                x, cond = (batch["x"], batch.get("cond")) if isinstance(batch, dict) else (batch[0], None)
                xs.append(x)
                if cond is not None:
                    conds.append(cond)
                if sum(len(b) for b in xs) >= self.num:
                    break
            x = torch.cat(xs)[: self.num] if xs else torch.empty(0)
            cond = torch.cat(conds)[: self.num] if conds else None
            self._real = (x, cond)
        return self._real

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking or self.num <= 0:
            return
        real, cond = self._real_items(trainer)
        if len(real) == 0:
            return
        # every rank samples (sharded weights need all ranks); the scores are averaged over ranks
        cond = None if cond is None else cond.to(module.device)
        generated = module.sample(len(real), sampler=self.sampler, steps=self.steps, seed=self.seed,
                                  cond=cond, batch_size=self.batch_size)
        scores = self.metrics(generated.float().cpu(), real.float())
        for name, value in scores.items():  # NaN too (too few items): every rank must log the same keys
            module.log(f"val/{name}", float(value), on_epoch=True, sync_dist=True, batch_size=len(real))
        if self.real_media is not None and not self._real_logged and trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_metrics(self.real_media.to_wandb(real, key="real/validation"), step=trainer.global_step)
            self._real_logged = True
