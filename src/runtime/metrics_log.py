"""``RUN_DIR/metrics.jsonl``: every logged scalar and every start, resume, preemption and end of a run, one
JSON object a line, so a report can be built from the run folder alone (no W&B server, no W&B file format).

Lines are ``{"step": S, "time": T, "metrics": {...}}`` for logged values and ``{"event": E, "step": S,
"time": T, ...}`` for events (``start``, ``resume``, ``preempted``, ``end``, ``error``). A resumed job
appends to the same file; ``src.report.metrics_file.read_metrics`` drops the values a resume replays (those
logged after the step it resumed from), so each step keeps the value of the job that carried on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from argparse import Namespace
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from .preemption import is_preempted

FILENAME = "metrics.jsonl"  # RUN_DIR/metrics.jsonl, the file src.report reads back


def _number(value) -> float | None:
    value = float(value.item() if hasattr(value, "item") else value)
    return value if math.isfinite(value) else None  # JSON has no NaN; a gap in the curve says the same


class MetricsFileLogger(Logger):
    """A Lightning logger that appends each ``log_metrics`` call as one line (rank 0 only)."""

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.path = Path(run_dir) / FILENAME

    @property
    def name(self) -> str:
        return "metrics_file"

    @property
    def version(self) -> str:
        return ""

    def _write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # one short write per line, flushed at once: a killed job loses nothing
            f.write(json.dumps(record) + "\n")

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        values = {k: _number(v) for k, v in metrics.items() if k != "epoch"}
        self._write({"step": int(step or 0), "time": round(time.time(), 3), "metrics": values})

    @rank_zero_only
    def log_hyperparams(self, params: dict | Namespace, *args, **kwargs) -> None:
        pass  # the resolved config is RUN_DIR/config.yaml

    @rank_zero_only
    def event(self, name: str, step: int, **info) -> None:
        self._write({"event": name, "step": int(step), "time": round(time.time(), 3), **info})


class RunEvents(pl.Callback):
    """Writes the start (or resume), preemption, end and error events of a job to the metrics file, and
    the final metrics into the W&B run's summary."""

    @staticmethod
    def _loggers(trainer):
        files = [lg for lg in trainer.loggers if isinstance(lg, MetricsFileLogger)]
        wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        return files, wandb

    def _event(self, trainer, name: str, **info) -> None:
        for lg in self._loggers(trainer)[0]:
            lg.event(name, trainer.global_step, **info)

    def on_train_start(self, trainer, module):
        wandb = self._loggers(trainer)[1]
        job = {"slurm_job": os.environ.get("SLURM_JOB_ID"), "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
               "wandb_id": wandb[0].version if wandb else None}
        if trainer.ckpt_path:  # what trainer.fit resumed from
            self._event(trainer, "resume", checkpoint=Path(trainer.ckpt_path).name, **job)
        else:
            self._event(trainer, "start", **job)

    def on_train_end(self, trainer, module):
        final = {k: _number(v) for k, v in trainer.callback_metrics.items()}
        preempted = is_preempted(trainer)
        if preempted:
            self._event(trainer, "preempted")
        else:
            self._event(trainer, "end", metrics=final)
        for lg in self._loggers(trainer)[1]:
            if trainer.is_global_zero:  # the run's summary holds where it ended
                lg.experiment.summary.update({**{k: v for k, v in final.items() if v is not None},
                                              "trainer/global_step": trainer.global_step, "preempted": preempted})

    def on_exception(self, trainer, module, exception):
        self._event(trainer, "error", error=type(exception).__name__)


def wandb_run_id(out: Path, ckpt_path: str | None, given: str | None = None) -> str:
    """The W&B run id kept in ``RUN_DIR/wandb/run-id``: ``logger.id`` when given, else this folder's, else that
    of the run ``ckpt_path`` belongs to (resuming it continues its W&B run), else a new one from the path."""
    own, theirs = out / "wandb" / "run-id", Path(ckpt_path).parent.parent / "wandb" / "run-id" if ckpt_path else None
    run_id = given or next((p.read_text().strip() for p in (own, theirs) if p is not None and p.is_file()), None)
    run_id = run_id or hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]  # as src.train names it
    if rank_zero_only.rank == 0 and (not own.is_file() or own.read_text().strip() != run_id):
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(run_id + "\n")
    return run_id
