"""Reports of one or several runs: a self-contained HTML page (``python -m src.report``) and a W&B report."""

from ..errors import ProjectError


class ReportError(ProjectError):
    """A folder or option the report cannot use; the message names it and says what to pass instead."""


def main(argv: list[str] | None = None) -> int:
    """``python -m src.report`` (see ``__main__``), also callable as ``src.report.main``."""
    from .__main__ import main as cli

    return cli(argv)
