"""Reports of one or several runs: a self-contained HTML page (``python -m src.report``) and a W&B report.

Python: ``write_report(run_dirs, out="report.html", wandb=None, title=None, max_sample_steps=12, max_clips=4)``
returns the page's path, the runs as read and the W&B report's URL; ``main(argv)`` is the command line.
"""

from .builder import ReportResult, write_report
from .cli import main
from .errors import ReportError

__all__ = ["ReportError", "ReportResult", "main", "write_report"]
