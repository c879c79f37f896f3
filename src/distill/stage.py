"""``python -m src.train stage=distill distill.teacher=CKPT``: the run takes the teacher's data, network,
objective and conditioning from the teacher checkpoint's own config, and builds a student initialised from it."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from src.checkpoint import CheckpointError, load_checkpoint
from src.config import to_plain
from src.errors import ConfigError
from src.latent.space import file_sha256
from src.latent.stage import module_from_checkpoint

from .student import LatentStudentModule, StudentModule, check_distill

log = logging.getLogger(__name__)

# what the student inherits from the teacher's run: the model is the teacher's, the data the teacher's
TEACHER_KEYS = ("domain", "datamodule", "media", "backbone", "diffusion", "cond", "latent", "reconstruction",
                "metrics", "privacy")
FLOOR_SIGMA = 0.002  # the lowest noise level of a distillation grid (EDM's sigma_min)


def teacher_path(cfg) -> Path:
    raw = (cfg.get("distill") or {}).get("teacher")
    if not raw:
        raise ConfigError("stage=distill needs distill.teacher=PATH, the checkpoint of a trained diffusion run "
                          "(RUN/checkpoints/last.ckpt).")
    path = Path(str(raw)).expanduser()
    if not path.exists():
        raise ConfigError(f"distill.teacher={path} does not exist; pass the checkpoint of a trained diffusion run "
                          "(RUN/checkpoints/last.ckpt).")
    return path


def adopt_teacher(cfg) -> None:
    """Replace the run's data, model and conditioning config by the teacher's (in place), then apply the
    non-null ``distill.datamodule`` keys; refuse a teacher that cannot be distilled, before any work starts."""
    path = teacher_path(cfg)
    steps = check_distill(_method_keys(cfg))["steps"]
    ckpt = load_checkpoint(path)
    hp, run_cfg = ckpt["hyper_parameters"], ckpt.get("run_config") or {}
    if "autoencoder" in hp and "backbone" not in hp:
        raise CheckpointError(f"distill.teacher={path} is a stage=autoencoder checkpoint; pass the checkpoint of a "
                              "diffusion run.")
    if hp.get("distill"):
        raise CheckpointError(f"distill.teacher={path} is itself a distilled student; pass the checkpoint of the "
                              "diffusion run it was distilled from.")
    if "media" not in run_cfg or "datamodule" not in run_cfg:
        raise CheckpointError(f"distill.teacher={path} has no run_config (data and media); pass a checkpoint "
                              "written by src.train.")
    with open_dict(cfg):
        for key in TEACHER_KEYS:
            if key in run_cfg:
                cfg[key] = OmegaConf.create(run_cfg[key]) if isinstance(run_cfg[key], dict) else run_cfg[key]
        for key, value in to_plain(cfg.distill.get("datamodule") or {}).items():
            if value is not None:
                cfg.datamodule[key] = value
    for section in ("sampling", "metrics"):  # previews and sample metrics: a step count the student takes
        s = cfg.get(section)
        if s is not None and (s.get("steps") is not None and int(s.steps) not in steps or s.get("sampler")):
            with open_dict(cfg):
                s.steps, s.sampler = None, None


def _method_keys(cfg) -> dict:
    d = cfg["distill"] if isinstance(cfg, dict) else to_plain(cfg.distill)
    return {k: d[k] for k in ("method", "steps", "grid_steps", "sigma_data", "solver", "loss", "target_decay",
                              "guidance") if d.get(k) is not None}


def sigma_range(objective, grid_steps: int, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """The teacher's noise range: its sampling grid's top, and its finest trained level (at least 0.002)."""
    hi = float(sigma_max) if sigma_max is not None else float(objective.sampling_sigmas(grid_steps)[0])
    lo = float(sigma_min) if sigma_min is not None else max(FLOOR_SIGMA, float(objective.sampling_sigmas(1000)[-2]))
    if not 0 < lo < hi:
        raise ConfigError(f"distill.sigma_min ({lo:g}) must be above 0 and below distill.sigma_max ({hi:g}).")
    return lo, hi


def build_student(cfg: dict, data_shape: list[int]):
    """The student module, initialised from the teacher's (EMA) weights, with the teacher attached; ``cfg``: the
    run's resolved config as a plain dict (after ``adopt_teacher``)."""
    path = teacher_path(cfg)
    d = cfg["distill"]
    teacher, ckpt = module_from_checkpoint(path, device="cpu")
    hp = dict(ckpt["hyper_parameters"])
    if list(hp["data_shape"]) != list(data_shape):
        raise ConfigError(f"The data's shape {list(data_shape)} differs from the teacher's {list(hp['data_shape'])}; "
                          "distil on data of the teacher's shape (drop the distill.datamodule options that change it).")
    options = check_distill(_method_keys(cfg))
    lo, hi = sigma_range(teacher.objective, int(options["grid_steps"]), d.get("sigma_min"), d.get("sigma_max"))
    options.update(sigma_min=lo, sigma_max=hi, teacher={"file": path.name, "sha256": file_sha256(path),
                                                         "step": int(ckpt.get("global_step", -1)),
                                                         "use_ema": bool(d.get("use_ema", True))})
    hp.update(optim=cfg["optim"], ema=cfg["ema"], seed=cfg["seed"], val_buckets=cfg["val_buckets"],
              perf=cfg.get("perf") or {}, distill=options)
    cls = LatentStudentModule if hp.get("latent") else StudentModule
    student = cls(**hp)
    student.start_from(teacher, use_ema=bool(d.get("use_ema", True)))
    log.info("Distilling %s (step %d, sha256 %s) with method=%s into a %s-step student on a %d-level grid, "
             "sigma %.4g..%.4g.", path, options["teacher"]["step"], options["teacher"]["sha256"][:12],
             options["method"], "/".join(map(str, options["steps"])), options["grid_steps"], lo, hi)
    return student
