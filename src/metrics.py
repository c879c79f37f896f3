"""Per-domain sample-quality metrics, computed at the end of each validation.

A domain config with a ``metrics:`` node (``kind`` plus options) gets a ``MetricsCallback``: it keeps up to
``num_samples`` real validation items, draws as many EMA samples, and logs ``val/<name>`` for every entry of
``metric(generated, real) -> dict[str, float]``. Metric classes are named here, by kind, and imported lazily.
"""

from __future__ import annotations

import importlib
import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)

# kind -> "module:Class"; a class is built with the metrics node's options and called as (generated, real)
METRICS: dict[str, str] = {"mri": "src.mri_metrics:MRIMetrics"}

CALLBACK_KEYS = ("num_samples", "sampler", "steps")  # options of the callback, not of the metric class


def build_metrics(cfg: dict):
    cfg = {k: v for k, v in cfg.items() if k not in CALLBACK_KEYS}
    kind = cfg.pop("kind", None)
    if kind not in METRICS:
        raise ValueError(f"Unknown metrics.kind '{kind}'; choose one of {', '.join(sorted(METRICS))}.")
    module, cls = METRICS[kind].split(":")
    return getattr(importlib.import_module(module), cls)(**cfg)


class MetricsCallback(pl.Callback):
    """Compares EMA samples with held-out validation items at every validation end (not the sanity check).

    ``real_media`` (a media writer) is only given when the user allowed real images to be uploaded
    (``privacy.upload_real_images``); then the real items also go to W&B, once.
    """

    def __init__(
        self,
        cfg: dict,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        real_media=None,
    ):
        self.metric = build_metrics(cfg)
        self.num = int(cfg.get("num_samples", 16))
        self.sampler, self.steps = cfg.get("sampler") or sampler, cfg.get("steps") or steps
        self.seed, self.batch_size, self.real_media = seed, batch_size, real_media
        self._real: list[torch.Tensor] = []
        self._real_logged = False

    def on_validation_epoch_start(self, trainer, module):
        self._real = []

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        have = sum(len(r) for r in self._real)
        if have < self.num:
            x = batch["x"] if isinstance(batch, dict) else batch[0]
            self._real.append(x[: self.num - have].detach().float().cpu())

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking or not self._real or self.num <= 0:
            return
        real = torch.cat(self._real)
        # every rank samples (sharded weights need all ranks); each compares with its own validation share
        gen = (
            module.sample(
                self.num,
                sampler=self.sampler,
                steps=self.steps,
                seed=self.seed + 7919,
                batch_size=self.batch_size,
            )
            .float()
            .cpu()
        )
        scores = self.metric(gen, real)
        for name, value in scores.items():  # NaN too (too few items): every rank must log the same keys
            module.log(f"val/{name}", float(value), on_epoch=True, sync_dist=True)
        if self.real_media is not None and not self._real_logged and trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_metrics(
                        self.real_media.to_wandb(real, key="real/validation"), step=trainer.global_step
                    )
            self._real_logged = True
