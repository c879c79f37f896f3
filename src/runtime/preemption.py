"""``last.ckpt`` always holds where training stopped: after the final step, or after a preemption signal.

SLURM sends SIGUSR1 ahead of the time limit (``--signal=SIGUSR1@90``). Lightning's own SLURM handler saves
*inside* the signal handler; each rank gets the signal at a different point of its step, so the collectives
of a distributed save (a barrier under DDP, a sharded write under FSDP2) can meet a different collective on
another rank and hang. Here the handler only raises a flag; at the next optimizer-step boundary the ranks
agree on it (one small all-reduce every ``check_every_n_steps`` steps; none at all in a single process),
all save ``last.ckpt`` together, training stops, and rank 0 calls
``scontrol requeue`` once everything is written. The requeued job keeps its job id, hence its run folder,
and resumes from ``last.ckpt`` by itself.

SIGTERM (``kill``, ``scancel``, a scheduler ending the job) and Ctrl-C (SIGINT) take the same path without the
requeue: ``last.ckpt`` at the next step boundary, then a clean stop. DataLoader workers forked from this
process inherit the handler, so a signal sent to the whole process group no longer kills them mid-batch.
A second Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytorch_lightning as pl

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class LastCheckpoint(pl.Callback):
    def __init__(self, path: str | Path, signum: int = signal.SIGUSR1, every_n_steps: int = 0,
                 check_every_n_steps: int = 10):
        self.path = Path(path)
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.signum = signum
        self.every_n_steps = every_n_steps  # ModelCheckpoint's interval: then it writes last.ckpt itself
        self.requested = False
        self.preempted = False
        self._saved_step = -1
        self.stop_signal: int | None = None  # SIGTERM or SIGINT: stop without requeueing
        self._pid = os.getpid()
        self._previous: dict = {}  # handlers replaced by install(), restored by uninstall()

    def install(self) -> None:
        """Install the handlers early, in the main thread: SIGUSR1's default action kills the process."""
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            signal.signal(self.signum, self._on_signal)
            for signum in STOP_SIGNALS:
                previous = signal.signal(signum, self._on_stop_signal)
                if previous != self._on_stop_signal:
                    self._previous.setdefault(signum, previous)

    def uninstall(self) -> None:
        """The SIGTERM/SIGINT handlers from before :meth:`install` (after training: a signal ends the process)."""
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its own SIGTERM handler at fit start (it exits from inside the loop, without
        # saving); ours take over again for the training loop, and Lightning restores them at teardown
        self.install()

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def _on_stop_signal(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the training process decides when to stop
        if self.stop_signal == signal.SIGINT and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.stop_signal is None:
            # os.write, not logging: a handler may run while the logging lock is held
            os.write(2, f"\n{signal.Signals(signum).name} received: saving last.ckpt at the end of this step, "
                        f"then stopping{' (Ctrl-C again: stop now, unsaved)' if signum == signal.SIGINT else ''}."
                        "\n".encode())
        self.stop_signal = signum
        self.requested = True

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.preempted or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only whole optimizer steps are a resumable position
        if trainer.world_size == 1:
            if not self.requested:
                return
        elif trainer.global_step % self.check_every_n_steps:
            return  # the ranks agree only every few steps: an all-reduce and a host sync each time
        elif not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        step = trainer.global_step
        if trainer.is_global_zero:
            what = "Stop" if self.stop_signal is not None else "Preemption"
            log.warning("%s signal received: saving %s at step %d and stopping.", what, self.path, step)
        if not (self.every_n_steps > 0 and step % self.every_n_steps == 0):
            self._save(trainer)
        self.preempted = True
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        # ModelCheckpoint writes last.ckpt only on its interval: keep the steps after its last save too
        if not self.preempted and self._saved_step != trainer.global_step:
            self._save(trainer)


def _ignore(signum, frame) -> None:
    pass


def leave_stop_signals_to_parent() -> None:
    """In a DataLoader worker: SIGTERM/SIGINT sent to the whole process group do not end it mid-batch.

    PyTorch's worker handler ends a worker on any SIGTERM not sent by its parent, and the training process
    then fails with "DataLoader worker ... killed by signal". The training process saves and stops; its
    workers end when it shuts its loaders down (or, at the latest, when their watchdog sees it gone).
    """
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _ignore)


def is_preempted(trainer: pl.Trainer) -> bool:
    """Training stopped early on a signal (preemption, SIGTERM or Ctrl-C) after saving ``last.ckpt``."""
    return any(isinstance(cb, LastCheckpoint) and cb.preempted for cb in trainer.callbacks)


def stop_signal(trainer: pl.Trainer) -> int | None:
    """SIGTERM or SIGINT when that is what stopped training (no requeue then), else None."""
    for cb in trainer.callbacks:
        if isinstance(cb, LastCheckpoint) and cb.preempted and cb.stop_signal is not None:
            return cb.stop_signal
    return None


def requeue() -> bool:
    """Put this SLURM job back in the queue (same job id); False when not under SLURM or scontrol fails."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")
    if not job:
        log.warning("Stopped on a preemption signal outside SLURM; run the same command again to resume.")
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("Could not requeue SLURM job %s (%s); resubmit it to resume from last.ckpt.", job, e)
        return False
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s; resubmit the job to resume from last.ckpt.", job,
                  result.stderr.strip())
        return False
    log.warning("Requeued SLURM job %s; it will resume from last.ckpt.", job)
    return True
