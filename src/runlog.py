"""``RUN_DIR/metrics.jsonl``: every logged scalar and every start, resume, preemption and end of a run, one
JSON object a line, so a report can be built from the run folder alone (no W&B server, no W&B file format).

Lines are ``{"step": S, "time": T, "metrics": {...}}`` for logged values and ``{"event": E, "step": S,
"time": T, ...}`` for events (``start``, ``resume``, ``preempted``, ``end``, ``error``). A resumed job
appends to the same file; ``src.report.metrics_file.read_metrics`` drops the values a resume replays (those
logged after the step it resumed from), so each step keeps the value of the job that carried on.
"""

from __future__ import annotations

import json
import math
import os
import time
from argparse import Namespace
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from .preemption import is_preempted
from .report.metrics_file import FILENAME


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
    """Writes start/resume, preemption, end and error events of a job to the metrics file."""

    def __init__(self, logger: MetricsFileLogger, ckpt_path: str | None = None, wandb_id: str | None = None):
        self.logger, self.ckpt_path, self.wandb_id = logger, ckpt_path, wandb_id

    def on_train_start(self, trainer, module):
        job = {"slurm_job": os.environ.get("SLURM_JOB_ID"), "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
               "wandb_id": self.wandb_id}
        if self.ckpt_path:
            self.logger.event("resume", trainer.global_step, checkpoint=Path(self.ckpt_path).name, **job)
        else:
            self.logger.event("start", trainer.global_step, **job)

    def on_train_end(self, trainer, module):
        if is_preempted(trainer):
            self.logger.event("preempted", trainer.global_step)
        else:
            final = {k: _number(v) for k, v in trainer.callback_metrics.items()}
            self.logger.event("end", trainer.global_step, metrics=final)

    def on_exception(self, trainer, module, exception):
        self.logger.event("error", trainer.global_step, error=type(exception).__name__)
