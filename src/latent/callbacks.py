"""Stage 1's previews: input / reconstruction pairs of fixed validation items, to samples/ and W&B."""

from __future__ import annotations

import torch
from pytorch_lightning.loggers import WandbLogger

from src.runtime.callbacks import SampleCallback


class ReconstructionCallback(SampleCallback):
    """Every ``every_n_steps`` (and at the end): the first ``num`` validation items and their EMA
    reconstructions, written as ``step<N>_input_<i>`` and ``step<N>_recon_<i>`` by the domain's media writer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inputs: torch.Tensor | None = None

    def _items(self, trainer) -> torch.Tensor:
        if self._inputs is None:
            xs, n = [], 0
            for batch in trainer.datamodule.val_dataloader():
                x = batch["x"] if isinstance(batch, dict) else batch[0]
                xs.append(x)
                n += len(x)
                if n >= self.num:
                    break
            self._inputs = torch.cat(xs)[: self.num] if xs else torch.empty(0)
        return self._inputs

    def _draw(self, trainer, module) -> None:
        step = trainer.global_step
        if step == self._last_step or self.num <= 0:
            return
        self._last_step = step
        inputs = self._items(trainer)
        if len(inputs) == 0:
            return
        recon = module.reconstruct(inputs.to(module.device)).float().cpu()
        if not trainer.is_global_zero:
            return
        self.media.save(inputs, self.out_dir, prefix=f"step{step:07d}_input")
        self.media.save(recon, self.out_dir, prefix=f"step{step:07d}_recon")
        media_log = getattr(self.media, "to_wandb", None)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and media_log is not None:
                # inputs first, then their reconstructions in the same order
                logger.log_metrics(media_log(torch.cat([inputs, recon]), key="samples/reconstruction"), step=step)
