"""Training callbacks: EMA samples to disk and W&B, throughput, and the run config inside checkpoints."""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from src.errors import positive_int

from .preemption import is_preempted

log = logging.getLogger(__name__)


class SampleCallback(pl.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end), draw EMA samples, save them, log them."""

    def __init__(self, out_dir: str | Path, media, every_n_steps: int = 1000, num: int = 16,
                 sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 batch_size: int | None = None, class_names: bool = True):
        self.out_dir = Path(out_dir)
        # captions name the classes of a class-conditional model; with patient data only their indices
        self.class_names = class_names
        self.media = media  # the domain's media writer, built by the entry point (src.domains.build_media)
        if steps is not None:  # 0 would fall back to diffusion.steps without a word
            positive_int(steps, "sampling.steps")
        self.every, self.num, self.sampler, self.steps = every_n_steps, num, sampler, steps
        self.seed, self.batch_size = seed, batch_size
        self._last_step = -1
        self.prompts: list[str] = []  # a text-conditional model: captions of held-out items, set at fit start

    def on_fit_start(self, trainer, module):
        if getattr(module, "has_text", False) and self.num > 0:
            # the datamodule is set up by now; streamed shards hold no item list, so their previews stay unprompted
            dm = getattr(trainer, "datamodule", None)
            self.prompts = dm.caption_samples(min(4, self.num)) if hasattr(dm, "caption_samples") else []

    def _draw(self, trainer: pl.Trainer, module) -> None:
        step = trainer.global_step
        if step == self._last_step or self.num <= 0:
            return
        self._last_step = step
        # every rank samples (sharded weights need all ranks); only rank 0 writes
        num, label = self.num, None
        classes = getattr(module, "num_classes", 0)
        if classes:  # class-conditional: the same number of samples of every class, class after class
            per = max(1, self.num // classes)
            num, label = per * classes, torch.arange(classes).repeat_interleave(per)
        text = None
        if self.prompts:  # text-conditional: the same number of samples per prompt, prompt after prompt
            per = max(1, self.num // len(self.prompts))
            num, text = per * len(self.prompts), [p for p in self.prompts for _ in range(per)]
        samples = module.sample(num, sampler=self.sampler, steps=self.steps, seed=self.seed,
                                batch_size=self.batch_size, label=label,
                                **({"text": text} if text is not None else {}))
        if trainer.is_global_zero:
            self.media.save(samples, self.out_dir, prefix=f"step{step:07d}")
            media_log = getattr(self.media, "to_wandb", None)
            extra = {}
            takes = set(inspect.signature(media_log).parameters) if media_log is not None else set()
            if label is not None and "classes" in takes:
                extra["classes"] = self._class_captions(module, label)
            if text is not None:
                self._write_prompts()
                if "classes" in takes and "row_kind" in takes:
                    extra.update(classes=self._prompt_captions(num // len(self.prompts)), row_kind="prompt")
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger) and media_log is not None:
                    logger.log_metrics(media_log(samples, key="samples/ema", **extra), step=step)

    def _class_captions(self, module, label: torch.Tensor) -> list[str]:
        """Each sample's class as W&B shows it: ``3 (cat)``, or only ``3`` when names must not leave the machine."""
        names = (getattr(module, "cond_cfg", None) or {}).get("classes") or []
        return [f"{c} ({names[c]})" if self.class_names and c < len(names) else str(c) for c in label.tolist()]

    def _prompt_captions(self, per: int) -> list[str]:
        """Each sample's prompt as W&B shows it: ``0: "a red circle"``, or only ``0`` with patient data."""
        return [f'{i}: "{p}"' if self.class_names else str(i) for i, p in enumerate(self.prompts) for _ in range(per)]

    def _write_prompts(self) -> None:
        """``samples/prompts.txt`` (line i: prompt i, the rows of every preview) for the report; never with
        patient data (captions may describe a patient)."""
        if self.class_names:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "prompts.txt").write_text("".join(f"{p}\n" for p in self.prompts), encoding="utf-8")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0:
            self._draw(trainer, module)

    def on_train_end(self, trainer, module):
        if not is_preempted(trainer):  # a preempted job spends its last seconds saving, not sampling
            self._draw(trainer, module)


class ThroughputCallback(pl.Callback):
    """Logs training samples per second (all ranks together) over each logging window."""

    def __init__(self, window: int = 10):
        self.window = window
        self._t0: float | None = None
        self._samples = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        x = batch["x"] if isinstance(batch, dict) else batch[0]
        self._samples += x.shape[0] * trainer.world_size
        if (batch_idx + 1) % self.window == 0 and self._t0 is not None:
            if x.is_cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - self._t0
            module.log("perf/samples_per_sec", self._samples / max(dt, 1e-9), on_step=True, on_epoch=False,
                       rank_zero_only=True)
            self._t0, self._samples = time.perf_counter(), 0


class RunConfigInCheckpoint(pl.Callback):
    """Stores the resolved run config (plain containers) in every checkpoint, for sampling tools."""

    def __init__(self, config: dict, private: bool = False):
        self.config, self.private = config, private

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["run_config"] = self.config
        geometry = getattr(getattr(trainer, "datamodule", None), "geometry", None)
        if geometry is not None:  # the reconstruction contract (src/geometry.py), checked by src.reconstruct
            checkpoint["geometry"] = geometry.to_dict()
        if self.private:  # callbacks' state holds absolute paths (the run folder may bear a patient's name)
            checkpoint["callbacks"] = {k: _strip_paths(v) for k, v in checkpoint.get("callbacks", {}).items()}


def _strip_paths(node):
    """Absolute paths in a callback's state reduced to their last part (a file or folder name of the run)."""
    if isinstance(node, dict):
        return {_strip_paths(k): _strip_paths(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_strip_paths(v) for v in node)
    if isinstance(node, str) and node.startswith("/"):
        return Path(node).name
    return node


class KeepNewestSteps(pl.Callback):
    """``checkpoint.keep`` over every ``stepNNNNNNN.ckpt`` in the folder, not only those this job wrote: a job
    killed after writing a step file (before its state recorded it) leaves one that Lightning's rotation no
    longer knows. The oldest beyond ``keep`` are removed when training starts and after each step; ``last.ckpt``
    and the newest ``keep`` step files stay, so rotation never takes the checkpoint a resume needs."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = Path(folder), int(keep)

    def step_files(self) -> list[Path]:
        files = [p for p in self.folder.glob("step*.ckpt") if p.name[4:-5].isdigit()]
        return sorted(files, key=lambda p: int(p.name[4:-5]))

    def prune(self, trainer: pl.Trainer) -> None:
        if self.keep < 1 or not trainer.is_global_zero:
            return
        files = self.step_files()
        for old in files[:max(0, len(files) - self.keep)]:
            if old.is_file():
                old.unlink(missing_ok=True)
                log.info("Removed %s: checkpoint.keep=%d counts every step file in the folder.", old.name, self.keep)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.prune(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.prune(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.prune(trainer)
