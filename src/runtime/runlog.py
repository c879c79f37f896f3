"""What a run tells the person who started it (console and ``train.log``): its length at the start, an ETA
after a few steps, the loss at every logging interval, and one summary line at the end."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytorch_lightning as pl

from .preemption import stop_signal

log = logging.getLogger("src.train")


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: the unit a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _loss(outputs):
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss.detach() if hasattr(loss, "detach") else loss


class RunLog(pl.Callback):
    """Run length, ETA, losses at ``every_n_steps`` and a final summary, logged on rank 0."""

    def __init__(self, checkpoints: str | Path, every_n_steps: int = 10, eta_after: int = 5):
        self.checkpoints = Path(checkpoints)
        self.every, self.eta_after = max(1, int(every_n_steps)), max(1, int(eta_after))
        self._start_step = 0
        self._t_start = self._t0 = None
        self._t0_step = 0
        self._loss = None
        self.summary: str | None = None

    def _seconds_per_step(self, step: int) -> float | None:
        done = step - self._t0_step
        return (time.perf_counter() - self._t0) / done if self._t0 is not None and done > 0 else None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._start_step, self._t_start = trainer.global_step, time.perf_counter()
        if not trainer.is_global_zero:
            return
        total = trainer.max_steps
        if total is None or total < 0:
            log.info("Training with no step limit (trainer.max_steps=-1); stop it with Ctrl-C (last.ckpt is saved).")
            return
        resumed = f", resuming at step {self._start_step}" if self._start_step else ""
        log.info("Training %d steps (trainer.max_steps=%d%s); an ETA follows after %d steps. Ctrl-C or SIGTERM "
                 "stops at the next step and saves last.ckpt.", total - self._start_step, total, resumed,
                 self.eta_after)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        loss = _loss(outputs)
        if loss is not None:
            self._loss = loss
        if self._t0 is None:  # timing starts after the first step (it pays for warm-up and compilation)
            self._t0, self._t0_step = time.perf_counter(), step
            return
        if not trainer.is_global_zero or trainer.should_stop:  # stopping: the summary follows
            return
        per_step = self._seconds_per_step(step)
        left = trainer.max_steps - step if trainer.max_steps and trainer.max_steps > 0 else None
        if step - self._t0_step == self.eta_after and per_step is not None and left is not None:
            minutes = left * per_step / 60
            hours = f" ({minutes / 60:.1f} h)" if minutes >= 90 else ""
            log.info("ETA: %d steps left, about %.1f min%s at %.2f s/step (%d steps measured).", left, minutes,
                     hours, per_step, step - self._t0_step)
        if step % self.every == 0:
            eta = f"  ETA {duration(left * per_step)}" if per_step is not None and left is not None else ""
            total = f"/{trainer.max_steps}" if left is not None else ""
            loss_text = f"{float(self._loss):.4f}" if self._loss is not None else "n/a"
            log.info("step %d%s  loss %s  %.2f s/step%s", step, total, loss_text, per_step or 0.0, eta)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        elapsed = time.perf_counter() - self._t_start if self._t_start is not None else 0.0
        loss_text = f"{float(self._loss):.4f}" if self._loss is not None else "n/a"
        signum = stop_signal(trainer)
        how = f"Stopped by {signal.Signals(signum).name}" if signum is not None else "Finished"
        self.summary = (f"{how} at step {step} ({step - self._start_step} steps in {duration(elapsed)}); "
                        f"final training loss {loss_text}; checkpoints in {self.checkpoints} (last.ckpt).")
        log.info("%s", self.summary)
