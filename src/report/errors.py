"""The report's error type, in a module of its own so every part of the package can import it."""

from src.errors import ProjectError


class ReportError(ProjectError):
    """A folder or option the report cannot use; the message names it and says what to pass instead."""
