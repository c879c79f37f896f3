"""Train a diffusion model: ``python -m src.train domain=image|audio|mri [hydra overrides...]``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from datamodules import DataError, build_datamodule

from .callbacks import RunConfigInCheckpoint, SampleCallback, ThroughputCallback
from .checkpoint import AtomicCheckpointIO, CheckpointError
from .config import redact, register_resolvers, to_plain
from .media import build_media
from .metrics import MetricsCallback
from .module import DiffusionModule

log = logging.getLogger("src.train")
register_resolvers()


def build_logger(cfg: dict, out: Path, privacy: dict | None = None):
    privacy = privacy or {}
    name = cfg.get("name", "none")
    if name == "none":
        return False
    if name != "wandb":
        raise ValueError(f"Unknown logger.name '{name}'; choose wandb or none.")
    from pytorch_lightning.loggers import WandbLogger

    mode = cfg.get("mode", "offline")
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.mode must be offline, online or disabled; got '{mode}'.")
    os.environ.setdefault("WANDB_SILENT", "true")
    extra = {}
    if privacy.get("patient_data"):
        import wandb

        # console output names input files, and system metadata holds the command line (datamodule.path)
        extra["settings"] = wandb.Settings(console="off", x_disable_meta=True, disable_git=True,
                                           save_code=False, x_save_requirements=False)
    return WandbLogger(project=cfg.get("project", "diffusion"), entity=cfg.get("entity"),
                       name=cfg.get("run_name") or out.name, save_dir=str(out), offline=mode == "offline",
                       mode=mode, tags=list(cfg.get("tags") or []), id=cfg.get("id") or _wandb_id(out),
                       **extra)


def _wandb_id(out: Path) -> str:
    """One W&B run per output folder, so a resumed or requeued job continues the same run."""
    import hashlib

    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | None:
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.exists():
            raise CheckpointError(f"ckpt_path={path} does not exist; pass an existing .ckpt file.")
        return str(path)
    last = out / "checkpoints" / "last.ckpt"
    if cfg.get("resume", "auto") == "auto" and last.exists():
        log.info("Resuming from %s (set resume=never or another paths.output_dir to start afresh).", last)
        return str(last)
    return None


def build_callbacks(cfg: DictConfig, out: Path, plain: dict) -> list[pl.Callback]:
    s = cfg.sampling
    privacy = to_plain(cfg.get("privacy"))
    extra: list[pl.Callback] = []
    if cfg.get("metrics"):
        real_media = build_media(to_plain(cfg.media)) if privacy.get("upload_real_images") else None
        extra.append(MetricsCallback(to_plain(cfg.metrics), sampler=s.sampler, steps=s.steps, seed=cfg.seed,
                                     batch_size=s.batch_size, real_media=real_media))
    return [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=cfg.checkpoint.every_n_steps, save_top_k=cfg.checkpoint.keep,
                        monitor="step", mode="max", save_last=True),
        LearningRateMonitor(logging_interval="step"),
        ThroughputCallback(window=max(1, int(cfg.trainer.get("log_every_n_steps", 10)))),
        SampleCallback(out / "samples", to_plain(cfg.media), every_n_steps=s.every_n_steps, num=s.num,
                       sampler=s.sampler, steps=s.steps, seed=cfg.seed, batch_size=s.batch_size),
        RunConfigInCheckpoint(redact(plain, data_path=bool(privacy.get("patient_data")))),
        *extra,
    ]


def train(cfg: DictConfig) -> dict:
    OmegaConf.resolve(cfg)
    out = Path(cfg.paths.output_dir).expanduser().resolve()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    plain = to_plain(cfg)
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)) or 0) == 0:
        OmegaConf.save(cfg, out / "config.yaml")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build_datamodule(to_plain(cfg.datamodule), seed=cfg.seed)
    model = DiffusionModule(backbone=to_plain(cfg.backbone), diffusion=to_plain(cfg.diffusion),
                            data_shape=dm.data_shape, optim=to_plain(cfg.optim), ema=to_plain(cfg.ema),
                            seed=cfg.seed, val_buckets=cfg.val_buckets)
    trainer_kwargs = to_plain(cfg.trainer)
    privacy = to_plain(cfg.get("privacy"))
    logger = build_logger(to_plain(cfg.logger), out, privacy)
    if logger:
        logger.log_hyperparams(redact(plain, data_path=not privacy.get("upload_data_paths", False)))
    trainer = pl.Trainer(**trainer_kwargs, default_root_dir=str(out), logger=logger,
                         callbacks=build_callbacks(cfg, out, plain), plugins=[AtomicCheckpointIO()],
                         use_distributed_sampler=False)
    if trainer.is_global_zero:
        log.info("Run folder: %s | backbone parameters: %.2fM", out, model.num_parameters() / 1e6)
    trainer.fit(model, datamodule=dm, ckpt_path=resume_checkpoint(cfg, out))
    return {"output_dir": str(out), "global_step": trainer.global_step,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (DataError, CheckpointError, ValueError) as e:
        # user-facing configuration and data problems: one sentence, no traceback
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
