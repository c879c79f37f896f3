"""Train a diffusion model: ``python -m src.train domain=image|audio|mri [hydra overrides...]``."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LambdaCallback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.strategies import ModelParallelStrategy
from pytorch_lightning.utilities import rank_zero_only

from .backbones import check_data_shape
from .backbones.lora import check_lora
from .backbones.pretrained import check_init, check_objective, describe, file_sha256
from .backbones.text import check_text_cond
from .checkpoint import AtomicCheckpointIO, CheckpointError, check_resumable, checkpoint_step, is_sharded
from .config import data_names, expand_home, redact, register_resolvers, to_plain
from .config_check import check_run
from .distill.stage import adopt_teacher, build_student
from .domains import build_datamodule, build_media, plugin_config_dirs
from .env_check import native_cpu_bf16
from .errors import ConfigError, ProjectError, one_of
from .latent.callbacks import ReconstructionCallback
from .latent.stage import build_model, is_autoencoder, is_distill
from .metrics import MetricsCallback
from .options import EXIT_BAD_INPUT, EXIT_NONFINITE
from .runtime import threads
from .runtime.callbacks import KeepNewestSteps, RunConfigInCheckpoint, SampleCallback, ThroughputCallback
from .runtime.distributed import build_strategy, cluster_plugins
from .runtime.metrics_log import MetricsFileLogger, RunEvents, wandb_run_id
from .runtime.phema import PHEMASnapshots
from .runtime.preemption import LastCheckpoint, is_preempted, requeue, stop_signal
from .runtime.runfolder import is_fresh, remove_failed_run
from .runtime.runlog import RunLog

log = logging.getLogger("src.train")
register_resolvers()


def build_logger(cfg: dict, out: Path, privacy: dict | None = None, run_id: str | None = None):
    privacy = privacy or {}
    run_id = cfg.get("id") or run_id or _wandb_id(out)
    name = cfg.get("name", "none")
    if name == "none":
        return False
    one_of(name, "logger.name", ("wandb", "none"))
    mode = cfg.get("mode", "offline")
    one_of(mode, "logger.mode", ("offline", "online", "disabled"))
    os.environ.setdefault("WANDB_SILENT", "true")
    extra = {}
    if privacy.get("patient_data"):
        import wandb  # optional heavy dependency: wandb (only for patient-data runs that log to W&B)

        # console output names input files, and system metadata holds the command line (datamodule.path)
        extra["settings"] = wandb.Settings(console="off", x_disable_meta=True, x_disable_machine_info=True,
                                           disable_git=True, save_code=False, x_save_requirements=False,
                                           host="redacted", username="redacted", program="src.train",
                                           x_disable_stats=True)
    # the folder's name may be a patient's: with patient data the run is named by its id
    name = cfg.get("run_name") or (run_id if privacy.get("patient_data") else out.name)
    return WandbLogger(project=cfg.get("project", "diffusion"), entity=cfg.get("entity"),
                       name=name, save_dir=str(out), offline=mode == "offline",
                       mode=mode, tags=list(cfg.get("tags") or []), id=run_id,
                       resume="allow", **extra)  # a resumed or requeued job continues the same run


def drop_wandb_debug_logs(out: Path) -> None:
    """W&B's own debug logs name the run folder and the host; with patient data they must not be synced."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    for log_file in [*out.glob("wandb/debug*.log"), *out.glob("wandb/*/logs/debug*.log")]:
        log_file.unlink(missing_ok=True)


def _wandb_id(out: Path) -> str:
    """One W&B run per output folder, so a resumed or requeued job continues the same run."""
    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]


def own_checkpoint(out: Path) -> tuple[Path, int] | None:
    """The readable checkpoint with the highest step in this run folder: ``last.ckpt`` or a
    ``step*.ckpt`` (files or sharded folders); an unreadable ``last.ckpt`` falls back to the step files."""
    folder = out / "checkpoints"
    last = folder / "last.ckpt"
    candidates = [p for p in [last, *sorted(folder.glob("step*.ckpt"))] if p.exists()]
    steps = [checkpoint_step(p) for p in candidates]
    readable = [i for i in range(len(candidates)) if steps[i] >= 0]
    if last.exists() and steps[0] < 0:
        rank_zero_only(log.warning)("%s cannot be read (a killed write or a damaged file); falling back to the "
                                    "newest readable step checkpoint.", last)
    if not readable:
        return None
    best = max(readable, key=lambda i: steps[i])  # ties keep last.ckpt, the first candidate
    return candidates[best], steps[best]


def remove_stale_temp_files(out: Path) -> None:
    """Delete the temporary files of checkpoint writes that a killed job left behind (rank 0 only)."""
    if rank_zero_only.rank != 0:
        return
    for tmp in (out / "checkpoints").glob(".*.tmp-*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            log.info("Removed %s, left by an interrupted checkpoint write.", tmp)


def resume_checkpoint(cfg: dict, out: Path) -> str | None:
    remove_stale_temp_files(out)
    auto = cfg.get("resume", "auto") == "auto"
    own = own_checkpoint(out) if auto else None
    if cfg.get("ckpt_path"):
        path = Path(cfg["ckpt_path"]).expanduser()
        if not path.exists():
            raise CheckpointError(f"ckpt_path={path} does not exist; pass an existing .ckpt file.")
        # a requeued job repeats its command line: its own newer checkpoint, not ckpt_path, is where it is
        if own is not None and own[1] > checkpoint_step(path):
            rank_zero_only(log.info)("Resuming from %s at step %d, newer than ckpt_path=%s.", *own, path)
            return str(own[0])
        return str(path)
    if own is not None:
        rank_zero_only(log.info)("Resuming from %s at step %d (resume=never or a new paths.output_dir starts "
                                 "afresh).", *own)
        return str(own[0])
    return None


def resolve_precision(trainer_cfg: dict):
    """``precision: auto``: bf16 mixed precision when training on GPUs, full fp32 otherwise; ``auto-bf16``: the
    same, and bf16 mixed precision on CPUs with native bf16 (``native_cpu_bf16``) too."""
    precision = trainer_cfg.get("precision", "32-true")
    if precision not in ("auto", "auto-bf16"):
        return precision
    gpu = trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    cpu_bf16 = precision == "auto-bf16" and not gpu and native_cpu_bf16()
    return "bf16-mixed" if gpu or cpu_bf16 else "32-true"


def log_distributed(trainer: pl.Trainer, module) -> None:
    if trainer.is_global_zero:
        env = getattr(trainer.strategy, "cluster_environment", None)  # a single-device strategy has none
        local = [p.to_local() if hasattr(p, "to_local") else p for p in module.parameters()]
        held = sum(t.numel() * t.element_size() for t in local) / 2**20
        log.info("Distributed: %s, world size %d, strategy %s, job %s, restart %s; this rank holds %.1f MB "
                 "of weights and EMA", type(env).__name__ if env is not None else "single process",
                 trainer.world_size,
                 type(trainer.strategy).__name__,
                 os.environ.get("SLURM_JOB_ID", "-"), os.environ.get("SLURM_RESTART_COUNT", "0"),
                 held)


def private_names(cfg: dict) -> set[str]:
    """With ``privacy.patient_data``: the data's file names, which no recorded config value may repeat."""
    if not (cfg.get("privacy") or {}).get("patient_data"):
        return set()
    return data_names((cfg.get("datamodule") or {}).get("path") or "")


def build_callbacks(cfg: dict, out: Path) -> list[pl.Callback]:
    """The run's callbacks from the plain config; media writers come from the domain registry here, so the
    runtime's callbacks never import a domain."""
    s = cfg["sampling"]
    privacy = cfg.get("privacy") or {}
    extra: list[pl.Callback] = []
    if cfg.get("metrics"):
        real_media = build_media(cfg["media"]) if privacy.get("upload_real_images") else None
        extra.append(MetricsCallback(cfg["metrics"], sampler=s["sampler"], steps=s["steps"], seed=cfg["seed"],
                                     batch_size=s["batch_size"], real_media=real_media))
    sample_preview = ReconstructionCallback if is_autoencoder(cfg) else SampleCallback  # stage 1: input/recon pairs
    callbacks = [
        ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=cfg["checkpoint"]["every_n_steps"], save_top_k=cfg["checkpoint"]["keep"],
                        monitor="step", mode="max", save_last=True, enable_version_counter=False),
        KeepNewestSteps(out / "checkpoints", cfg["checkpoint"]["keep"]),
        ThroughputCallback(window=max(1, int(cfg["trainer"].get("log_every_n_steps", 10)))),
        RunEvents(),  # start/resume, preemption and end in RUN_DIR/metrics.jsonl; final metrics in the W&B summary
        sample_preview(out / "samples", build_media(cfg["media"]), every_n_steps=s["every_n_steps"], num=s["num"],
                       sampler=s["sampler"], steps=s["steps"], seed=cfg["seed"], batch_size=s["batch_size"],
                       class_names=not privacy.get("patient_data")),
        RunConfigInCheckpoint(redact(cfg, data_path=bool(privacy.get("patient_data")), names=private_names(cfg)),
                              private=bool(privacy.get("patient_data"))),
        LearningRateMonitor(logging_interval="step"),
        PHEMASnapshots(out / "checkpoints"),
        *extra,
    ]
    return callbacks


def module_cond(cond: dict | None, dm) -> dict | None:
    """``cond=class``: the class count and names from the datamodule's label map (``dm.classes``) or the config."""
    cond = dict(cond or {})
    kind = cond.pop("kind", "none")
    if kind == "text":
        return text_cond(cond, dm)
    if kind != "class":
        return None
    classes = getattr(dm, "classes", None) or cond.get("classes")
    num = cond.get("num_classes") or (len(classes) if classes else None)
    if not num:
        raise ConfigError("cond=class found no classes: the datamodule reported no label map; set "
                          "cond.num_classes=N (and make the batches carry 'label').")
    classes = list(classes) if classes else [str(i) for i in range(int(num))]
    return {"num_classes": int(num), "classes": classes, "drop_prob": float(cond.get("drop_prob", 0.1))}


TEXT_KEYS = ("encoder", "encoder_path", "drop_prob", "max_length", "cache", "dim", "layers", "heads")


def text_cond(cond: dict, dm) -> dict:
    """``cond=text``: the text encoder's settings (checked here, before any work) for the model; the datamodule
    must read captions."""
    if not getattr(dm, "has_captions", False):
        raise ConfigError("cond=text needs captions, but datamodule.captions=none; set datamodule.captions="
                          "sidecar|csv|datalist (cond=text sets auto).")
    out = {"kind": "text", **{k: cond[k] for k in TEXT_KEYS if cond.get(k) is not None}}
    if out.get("encoder_path"):
        out["encoder_path"] = str(Path(str(out["encoder_path"])).expanduser().resolve())
    return check_text_cond(out)


def apply_init(plain: dict) -> None:
    """``init.from``: the backbone the source needs replaces ``plain["backbone"]`` and ``plain["init"]`` records
    the source (kind, weights file, sha256); checked before any work starts."""
    init = check_init(plain.get("init"))
    lora = check_lora((plain.get("finetune") or {}).get("lora"))
    if lora and not init["from"]:
        raise ConfigError("finetune.lora.rank trains adapters on a pretrained model; set init.from=PATH to the "
                          "base model (or drop finetune.lora.rank to train every weight).")
    if not init["from"]:
        return
    if is_autoencoder(plain):
        raise ConfigError("init.from starts diffusion runs; drop it for stage=autoencoder (autoencoders train "
                          "from scratch here).")
    strategy = (plain.get("trainer") or {}).get("strategy")
    if lora and isinstance(strategy, dict) and strategy.get("name") == "fsdp2":
        raise ConfigError("finetune.lora is not supported with trainer=fsdp (sharding a frozen base with small "
                          "adapters is untested); train LoRA with trainer=ddp, whose adapters are small anyway.")
    source = describe(init["from"], plain["backbone"])
    note = check_objective(init, source, plain["diffusion"])
    plain["backbone"] = source["backbone"]
    plain["init"] = {**init, "from": str(Path(init["from"]).expanduser().resolve()), "kind": source["kind"],
                     "file": str(Path(source["file"]).resolve()), "sha256": file_sha256(source["file"]),
                     "mapping": note}
    rank_zero_only(log.info)("Starting from %s (%s; objective: %s) with a fresh optimizer and step.",
                             plain["init"]["from"], source["kind"], note)


def train(cfg: DictConfig) -> dict:
    """One training run from the composed Hydra config: resolved and converted to plain dicts once, here; every
    part below receives plain sections."""
    OmegaConf.resolve(cfg)
    if is_distill(cfg):  # the data, network and objective are the teacher's (src/distill)
        adopt_teacher(cfg)
    plain = to_plain(cfg)
    check_run({k: v for k, v in plain.items() if k != "hydra"})  # every numeric key in range, before any work
    threads.apply(plain.get("threads", "auto"), plain["trainer"].get("devices"))
    apply_init(plain)
    out = Path(plain["paths"]["output_dir"]).expanduser().resolve()
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # the launch rank (RANK, LOCAL_RANK or SLURM_PROCID), known before setup
        OmegaConf.save(cfg, out / "config.yaml")
    ckpt_cfg = plain["checkpoint"]
    last = LastCheckpoint(out / "checkpoints" / "last.ckpt", every_n_steps=ckpt_cfg["every_n_steps"],
                          check_every_n_steps=ckpt_cfg.get("signal_check_every_n_steps", 10))
    last.install()
    pl.seed_everything(plain["seed"], workers=True, verbose=False)

    dm = build_datamodule(dict(plain["datamodule"]), seed=plain["seed"])
    threads.limit_worker_threads(dm)
    # pixel-space diffusion, stage=autoencoder or latent diffusion
    if is_distill(plain):  # a few-step student of distill.teacher, initialised from it (src/distill)
        model = build_student(plain, dm.data_shape)
    else:
        init = plain["init"] if (plain.get("init") or {}).get("from") else None
        model = build_model(plain, dm.data_shape, cond=module_cond(plain.get("cond"), dm), init=init,
                            finetune=plain.get("finetune") if init else None)
        if getattr(model, "lora_counts", None) and rank_zero_only.rank == 0:
            c = model.lora_counts
            log.info("LoRA rank %d on %d layers: %d trainable parameters, %.2f%% of the base's %d (frozen).",
                     model.lora["rank"], c["layers"], c["trainable"], 100 * c["trainable"] / c["base"], c["base"])
    if hasattr(model, "backbone"):  # the backbone says which sizes it takes (latent runs: the latent's)
        latent = getattr(model, "latent", None)  # a latent space says what sets its sizes (e.g. a clip length)
        check_data_shape(model.data_shape, model.backbone, getattr(latent, "size_fix", None))
    trainer_kwargs = dict(plain["trainer"])
    trainer_kwargs["strategy"] = build_strategy(trainer_kwargs.get("strategy", "auto"))
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs)
    privacy = plain.get("privacy") or {}
    logger_cfg = plain["logger"]
    ckpt_path = resume_checkpoint(plain, out)
    run_id = wandb_run_id(out, ckpt_path, logger_cfg.get("id")) if logger_cfg.get("name") == "wandb" else None
    if run_id is not None:
        # a W&B run left open by an earlier train() in this process (a sweep, a notebook, a test) belongs to
        # another folder: Lightning's logger would log into it instead of starting this folder's own run
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()
    wandb_logger = build_logger(logger_cfg, out, privacy, run_id)
    logger = [x for x in (wandb_logger, MetricsFileLogger(out)) if x]  # RUN_DIR/metrics.jsonl for src.report
    callbacks = [cb for cb in build_callbacks(plain, out)
                 if logger or not isinstance(cb, LearningRateMonitor)]  # it refuses to run without a logger
    runlog = RunLog(out / "checkpoints", every_n_steps=plain["trainer"].get("log_every_n_steps", 10))
    callbacks += [last, runlog, LambdaCallback(on_fit_start=log_distributed)]
    trainer = pl.Trainer(**trainer_kwargs, default_root_dir=str(out), logger=logger, callbacks=callbacks,
                         plugins=[AtomicCheckpointIO(), *cluster_plugins()], use_distributed_sampler=False)
    if trainer.is_global_zero:
        log.info("Run folder: %s | backbone parameters: %.2fM", out, model.num_parameters() / 1e6)
        if wandb_logger:
            private = {"data_path": not privacy.get("upload_data_paths", False),
                       "class_names": bool(privacy.get("patient_data")), "names": private_names(plain)}
            # the model's own hyper-parameters, redacted like the config (Lightning's unredacted logging is off)
            hparams = redact(dict(model.hparams_initial), **private)
            wandb_logger.log_hyperparams({**hparams, "config": redact(plain, **private),
                                          "backbone_parameters": model.num_parameters()})
    if ckpt_path and is_sharded(ckpt_path) and not isinstance(trainer.strategy, ModelParallelStrategy):
        raise CheckpointError(f"{ckpt_path} is a sharded (trainer=fsdp) checkpoint; resume it with "
                              "trainer=fsdp (any number of devices), or make it one file with "
                              "python -m src.consolidate to sample from it.")
    if ckpt_path:
        check_resumable(ckpt_path, model)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    last.uninstall()
    preempted, stopped_by = is_preempted(trainer), stop_signal(trainer)
    if privacy.get("patient_data") and trainer.is_global_zero:
        drop_wandb_debug_logs(out)
    if preempted and stopped_by is None and trainer.is_global_zero:
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()  # the requeue ends this job: close the offline run before that
        requeue()  # last: everything is saved
    return {"output_dir": str(out), "global_step": trainer.global_step, "preempted": preempted,
            "stop_signal": stopped_by, "last_checkpoint": str(last.path), "summary": runlog.summary,
            "nonfinite": getattr(model, "nonfinite_stop", None),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}


def nonfinite_message(result: dict) -> str:
    """The sentence for a run that stopped itself on non-finite values (exit status ``EXIT_NONFINITE``)."""
    stop = result["nonfinite"]
    why = stop.get("data") or "the loss or gradients overflowed (lower optim.lr, or set optim.nonfinite=skip)"
    return (f"the run stopped itself at step {stop['step']} on non-finite values: {why}; the checkpoints in "
            f"{Path(result['output_dir']) / 'checkpoints'} hold the last finite weights.")


def resume_command(last_ckpt: str) -> str:
    """The command line of this run with ``ckpt_path`` pointing at its ``last.ckpt``."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "+ckpt_path="))]
    return " ".join(["python -m src.train", *overrides, f"ckpt_path={last_ckpt}"])


def launch_rank() -> int:
    """This process's rank as the launcher set it (srun, torchrun or Lightning's own), before any setup."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def rank_overrides(rank: int) -> list[str]:
    """Hydra overrides for a non-zero rank: rank 0 alone writes ``.hydra/`` and ``train.log``."""
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"] if rank > 0 else []


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir).expanduser().resolve()
    fresh = rank_zero_only.rank == 0 and is_fresh(out)
    try:
        result = train(cfg)
    except ProjectError as e:
        # user-facing configuration and data problems: one sentence, no traceback
        log.error("%s", e)
        removed = fresh and remove_failed_run(out)
        print(f"error: {e}" + (f" (its run folder {out} was removed)" if removed else ""), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if result.get("nonfinite"):
        print(f"error: {nonfinite_message(result)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_NONFINITE)
    if result["stop_signal"] is not None:
        if rank_zero_only.rank == 0:
            print(f"Saved {result['last_checkpoint']} at step {result['global_step']}. Resume with:\n  "
                  f"{resume_command(result['last_checkpoint'])}", file=sys.stderr, flush=True)
        sys.exit(128 + int(result["stop_signal"]))  # the shell's convention for a run ended by a signal


def with_plugin_configs(argv: list[str]) -> list[str]:
    """Hydra overrides with the config folders of plugin domains (``DIFFUSION_DOMAINS``, entry points) added
    to ``hydra.searchpath``, so ``domain=<plugin>`` finds the plugin's own ``domain/<name>.yaml``."""
    dirs = [d if "://" in d else f"file://{Path(d).resolve()}" for d in plugin_config_dirs()]
    if not dirs:
        return argv
    given = [a for a in argv if a.startswith("hydra.searchpath=")]
    rest = [a for a in argv if not a.startswith("hydra.searchpath=")]
    paths = [p for a in given for p in a.split("=", 1)[1].strip("[]").split(",") if p] + dirs
    return [*rest, f"hydra.searchpath=[{','.join(paths)}]"]


if __name__ == "__main__":
    sys.argv[1:] = with_plugin_configs(expand_home(sys.argv[1:])) + rank_overrides(launch_rank())
    main()
