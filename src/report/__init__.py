"""Reports of one or several runs: a self-contained HTML page (``python -m src.report``) and a W&B report."""

from ..errors import ProjectError


class ReportError(ProjectError):
    """A folder or option the report cannot use; the message names it and says what to pass instead."""
