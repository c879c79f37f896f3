"""The report as a library call: ``write_report(run_dirs, out="report.html", wandb=None, ...)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ReportError
from .page import write_html
from .run import Run, load_run
from .wandb_report import build_report, save_report


@dataclass
class ReportResult:
    html: Path                 # the self-contained page
    runs: list[Run]            # the run folders as read
    wandb_url: str | None      # the saved W&B report, when one was asked for


def write_report(run_dirs: Sequence[str | Path], out: str | Path = "report.html", *, wandb: str | None = None,
                 title: str | None = None, max_sample_steps: int = 12, max_clips: int = 4) -> ReportResult:
    """An HTML page over the training runs ``run_dirs`` (each a ``paths.output_dir``) written to ``out``.

    ``wandb="ENTITY/PROJECT"`` also saves a W&B report (titled ``title``) over the same runs, which must have
    been uploaded with ``wandb sync``. ``max_sample_steps``: sample steps shown per image run, evenly spread (a
    third of it for audio and MRI); ``max_clips``: audio clips or MRI volumes shown per step. Raises
    ``ReportError`` for a folder or option it cannot use."""
    if max_sample_steps < 1 or max_clips < 1:
        raise ReportError("--max-sample-steps and --max-clips must be at least 1.")
    runs = [load_run(p) for p in run_dirs]
    page = write_html(runs, out, max_sample_steps=max_sample_steps, max_clips=max_clips)
    url = None
    if wandb:
        url = save_report(build_report(runs, wandb, title=title))
    return ReportResult(html=page, runs=runs, wandb_url=url)
