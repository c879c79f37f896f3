"""The student: a DiffusionModule (pixel or latent space) whose network starts as the teacher's EMA weights and
learns to sample in 1-4 steps.

``distill.method``:

* ``consistency``: consistency distillation (Song et al. 2023, Algorithm 2). The student is the consistency
  function ``f(x, sigma) = c_skip x + c_out F`` (``src.distill.maths``); its target is ``f`` of the *target
  network* (an EMA of the student with decay ``distill.target_decay``) at the point one teacher ODE step
  (Heun or Euler) lower. Samples by multistep consistency sampling at any of ``distill.steps``.
* ``progressive``: progressive distillation (Salimans & Ho 2022): in ``log2(grid_steps / steps)`` phases the
  student learns to take one DDIM step where the phase's teacher (the original teacher, then the student of the
  previous phase, kept in the target slot) takes two. Samples with DDIM at its one final step count.

The teacher's network is held but never saved (not a sub-module); the target network is saved, so a resumed
run continues exactly. The checkpoint's ``hyper_parameters.distill`` records the teacher's file hash, the grid
and the step counts the student supports, so sampling needs no teacher.
"""

from __future__ import annotations

import logging
import math

import torch

from src.checkpoint import CheckpointError
from src.conditioning import with_label
from src.diffusion.guidance import guided
from src.errors import ConfigError
from src.latent.diffusion import LatentDiffusionModule
from src.module import DiffusionModule
from src.runtime.ema import EMA

from .maths import (
    consistency_distance,
    consistency_function,
    consistency_pair,
    distill_grid,
    progressive_target,
    student_sigmas,
)

log = logging.getLogger(__name__)
METHODS = ("consistency", "progressive")


def check_distill(cfg: dict) -> dict:
    """The ``distill`` hyper-parameters, checked: one sentence naming the key for a bad value."""
    c = {"method": "consistency", "steps": [1, 2, 4], "grid_steps": 16, "sigma_data": 0.5, "solver": "heun",
         "loss": "l2", "target_decay": 0.95, "guidance": 1.0, **cfg}
    if c["method"] not in METHODS:
        raise ConfigError(f"distill.method must be one of {', '.join(METHODS)}; got '{c['method']}'.")
    n = c["grid_steps"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"distill.grid_steps must be a whole number >= 2; got {n!r}.")
    steps = c["steps"] if isinstance(c["steps"], (list, tuple)) else [c["steps"]]
    if not steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or n % k for k in steps):
        raise ConfigError(f"distill.steps must be step counts that divide distill.grid_steps={n} (e.g. [1,2,4]); "
                          f"got {c['steps']!r}.")
    c["steps"] = sorted({int(k) for k in steps})
    if c["method"] == "progressive":
        phases = math.log2(n / c["steps"][0])
        if phases < 1 or phases != int(phases):
            raise ConfigError(f"distill.method=progressive halves the steps from distill.grid_steps={n} down to "
                              f"distill.steps; make grid_steps / min(steps) a power of two >= 2.")
        c["steps"] = c["steps"][:1]  # only the last phase's student is kept
        if float(c["guidance"]) != 1.0:
            raise ConfigError("distill.guidance distils guidance into method=consistency students only; set "
                              "distill.guidance=1 with method=progressive and pass guidance= when sampling.")
    if c["solver"] not in ("heun", "euler"):
        raise ConfigError(f"distill.solver must be heun or euler; got '{c['solver']}'.")
    if c["loss"] not in ("l2", "huber"):
        raise ConfigError(f"distill.loss must be l2 or huber; got '{c['loss']}'.")
    if not 0.0 <= float(c["target_decay"]) < 1.0:
        raise ConfigError(f"distill.target_decay must be in [0, 1); got {c['target_decay']}.")
    if float(c["guidance"]) < 0:
        raise ConfigError(f"distill.guidance must be >= 0; got {c['guidance']}.")
    return c


class StudentObjective:
    """The teacher's objective seen through the student: ``denoiser`` is the consistency function (consistency
    students) or the plain denoiser (progressive), and ``sampling_sigmas`` gives only the trained step counts."""

    def __init__(self, base, cfg: dict, grid: torch.Tensor):
        self.base, self.cfg, self.grid = base, cfg, grid
        self.sigma_min = float(grid[-1])
        self.default_sampler = "consistency" if cfg["method"] == "consistency" else "ddim"

    def denoiser(self, net, cond=None):
        d = self.base.denoiser(net, cond)
        if self.cfg["method"] != "consistency":
            return d
        return consistency_function(d, self.sigma_min, float(self.cfg["sigma_data"]))

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        supported = self.cfg["steps"]
        if int(steps) not in supported:
            told = " or ".join(", ".join(map(str, supported)).rsplit(", ", 1))
            raise ConfigError(f"This student was distilled for {told} steps (distill.steps), not {steps}; pass "
                              f"steps={'|'.join(map(str, supported))}.")
        return student_sigmas(self.grid, int(steps))

    def loss(self, *args, **kwargs):
        raise ConfigError("A student's loss is the distillation loss of its module (src.distill.student).")


class StudentMixin:
    """What a student adds to a DiffusionModule (pixel space) or a LatentDiffusionModule."""

    def __init__(self, *args, distill: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill_cfg = check_distill(distill)
        c = self.distill_cfg
        if c.get("sigma_min") is None or c.get("sigma_max") is None:
            raise CheckpointError("The student's distill.sigma_min/sigma_max are missing; it was not written by "
                                  "src.train stage=distill.")
        self.grid = distill_grid(int(c["grid_steps"]), float(c["sigma_min"]), float(c["sigma_max"]))
        self.teacher_objective = self.objective
        self.objective = StudentObjective(self.teacher_objective, c, self.grid)
        # the student samples with its own sampler at its largest trained step count unless told otherwise
        self.diffusion_cfg = {**self.diffusion_cfg, "sampler": self.objective.default_sampler,
                              "steps": c["steps"][-1], "sampler_options": {}}
        # consistency: the target network (EMA of the student); progressive: the teacher of the current phase
        decay = float(c["target_decay"]) if c["method"] == "consistency" else 1.0
        self.target = EMA(self.backbone, decay=decay, warmup=False)
        self.register_buffer("phase", torch.zeros((), dtype=torch.long))
        object.__setattr__(self, "_teacher", None)  # the teacher's network: not a sub-module, never saved

    # ---- set-up ----------------------------------------------------------------------------------------
    def start_from(self, teacher, use_ema: bool = True) -> None:
        """Copy the teacher's weights (EMA by default) into the student, its EMA and the target; keep the
        teacher's network for the ODE steps (consistency)."""
        net = teacher.ema.module if use_ema else teacher.backbone
        weights = net.state_dict()
        for copy_ in (self.backbone, self.ema.module, self.target.module):
            copy_.load_state_dict(weights)
        if hasattr(teacher, "latent"):
            self.latent.load_state_dict(teacher.latent.state_dict())
        object.__setattr__(self, "_teacher", net.requires_grad_(False).eval())

    def on_fit_start(self):
        super_start = getattr(super(), "on_fit_start", None)
        if super_start is not None:
            super_start()
        if self._teacher is None and self.distill_cfg["method"] == "consistency":
            raise CheckpointError("A consistency student trains against its teacher; run it through "
                                  "python -m src.train stage=distill distill.teacher=PATH.")
        if self._teacher is not None:
            self._teacher.to(self.device)

    def configure_model(self):
        super().configure_model()
        shard_module = getattr(getattr(self._trainer, "strategy", None), "shard_module", None)
        if shard_module is not None:
            shard_module(self.target.module, trainable=False)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        theirs = ((checkpoint.get("hyper_parameters") or {}).get("distill") or {}).get("teacher") or {}
        ours = self.distill_cfg.get("teacher") or {}
        if theirs.get("sha256") and ours.get("sha256") and theirs["sha256"] != ours["sha256"]:
            raise CheckpointError(f"The run's checkpoint distils teacher {theirs.get('file')} (sha256 "
                                  f"{theirs['sha256'][:12]}), but distill.teacher is {ours.get('file')} (sha256 "
                                  f"{ours['sha256'][:12]}); pass the same teacher to resume, or start a new run.")
        super_load = getattr(super(), "on_load_checkpoint", None)
        if super_load is not None:
            super_load(checkpoint)

    # ---- training --------------------------------------------------------------------------------------
    def _phases(self) -> int:
        c = self.distill_cfg
        return int(round(math.log2(c["grid_steps"] / c["steps"][0])))

    def _phase_now(self) -> int:
        total = self.optim_cfg.get("total_steps") or (self.trainer.max_steps if self.trainer.max_steps > 0 else 0)
        if not total:
            return 0
        per = max(1, math.ceil(total / self._phases()))
        return min(self.global_step // per, self._phases() - 1)

    def on_train_batch_start(self, batch, batch_idx):
        if self.distill_cfg["method"] != "progressive":
            return
        phase = self._phase_now()
        if phase > int(self.phase):  # the student of the last phase becomes the teacher of this one
            self.target.module.load_state_dict(self.ema.module.state_dict())
            self.phase.fill_(phase)
            if self.trainer.is_global_zero:
                log.info("Progressive distillation: phase %d of %d, %d -> %d steps.", phase + 1, self._phases(),
                         *self._progressive_steps(phase))

    def _progressive_steps(self, phase: int) -> tuple[int, int]:
        n = self.distill_cfg["grid_steps"] // 2 ** (phase + 1)
        return 2 * n, n

    def optimizer_step(self, *args, **kwargs):
        skipped = self._skip_step  # a non-finite step updates neither the EMA nor the target
        super().optimizer_step(*args, **kwargs)
        if self.distill_cfg["method"] == "consistency" and not skipped:
            self.target.update(self.backbone)

    def _teacher_denoiser(self, cond, label, text):
        obj = self.teacher_objective
        w = float(self.distill_cfg["guidance"])
        if label is None or w == 1.0 or text is not None:  # guidance is distilled in for class labels only
            return obj.denoiser(self.conditioned(self._teacher, label, text), cond)

        def cond_den(x, sigma, lab):
            reps = x.shape[0] // label.shape[0]  # guidance doubles the batch; the other condition follows
            cc = cond if cond is None or reps == 1 else torch.cat([cond] * reps)
            return obj.denoiser(with_label(self._teacher, lab), cc)(x, sigma)

        return guided(cond_den, label, self.num_classes, w)

    def diffusion_loss(self, net, x, u, noise, cond, label=None, text=None) -> torch.Tensor:
        c = self.distill_cfg
        grid = self.grid.to(x.device)
        if c["method"] == "consistency":
            index = (u * (len(grid) - 1)).long().clamp(0, len(grid) - 2)
            xn, s_hi, x_hat, s_lo = consistency_pair(self._teacher_denoiser(cond, label, text), x, noise, grid, index,
                                                     c["solver"])
            with torch.no_grad():
                target = self.objective.denoiser(self.conditioned(self.target.module, label, text), cond)(x_hat, s_lo)
            pred = self.objective.denoiser(self.conditioned(net, label, text), cond)(xn, s_hi)
            return consistency_distance(pred, target, c["loss"])
        two_n, n = self._progressive_steps(int(self.phase))
        fine, coarse = student_sigmas(grid, two_n), student_sigmas(grid, n)
        i = (u * n).long().clamp(0, n - 1)
        sigma, sigma_next, sigma_mid = coarse[i], coarse[i + 1], fine[2 * i + 1]
        xn = x + sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) * noise
        teacher = self.teacher_objective.denoiser(self.conditioned(self.target.module, label, text), cond)
        target = progressive_target(teacher, xn, sigma, sigma_mid, sigma_next)
        pred = self.teacher_objective.denoiser(self.conditioned(net, label, text), cond)(xn, sigma)
        weight = sigma.pow(-2).clamp_min(1.0)  # truncated SNR weighting, max(SNR, 1) (Salimans & Ho 2022)
        return weight * (pred.float() - target.float()).pow(2).flatten(1).mean(1)

    # ---- sampling --------------------------------------------------------------------------------------
    def check_sampler(self, sampler: str | None) -> str:
        own = self.objective.default_sampler
        if sampler not in (None, own):
            raise ConfigError(f"A {self.distill_cfg['method']} student samples with sampler={own} (its own "
                              f"few-step sampler); drop sampler={sampler}.")
        return own

    @torch.no_grad()
    def sample(self, num: int, sampler: str | None = None, *args, **kwargs) -> torch.Tensor:
        return super().sample(num, self.check_sampler(sampler), *args, **kwargs)


class StudentModule(StudentMixin, DiffusionModule):
    """A student of a pixel- (voxel-) space teacher."""


class LatentStudentModule(StudentMixin, LatentDiffusionModule):
    """A student of a latent diffusion teacher: the same frozen autoencoder, copied from the teacher."""
