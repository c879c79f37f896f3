"""The project's own error type: a problem with the user's input, config, files or environment.

Command-line tools catch ``ProjectError`` (and only it) and print its message as one line; anything else
is a bug and stays a traceback. Messages name the file or key and say what to do.
"""

from __future__ import annotations


class ProjectError(Exception):
    """A user-facing problem; the message is one sentence naming the file or key and the fix."""


class ConfigError(ProjectError, ValueError):
    """A config key or command-line option with a value that cannot work."""
