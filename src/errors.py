"""The project's own error types: a problem with the user's input, config, files or environment.

Command-line tools catch ``ProjectError`` (and only it) and print its message as one line; anything else
is a bug and stays a traceback. Messages name the file or key and say what to do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


class ProjectError(Exception):
    """A user-facing problem; the message is one sentence naming the file or key and the fix."""


class ConfigError(ProjectError, ValueError):
    """A config key or command-line option with a value that cannot work."""


class DataError(ProjectError, ValueError):
    """Bad user data: the message says which file or key and what to do."""


def positive_int(value, key: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``, or a ConfigError naming ``key``."""
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or value < minimum:
        raise ConfigError(f"{key} must be a whole number of at least {minimum}, got {value!r}.")
    return int(value)


def one_of(value, key: str, choices) -> None:
    """A ConfigError naming ``key`` and the valid ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ConfigError(f"Unknown {key} '{value}'; choose one of {', '.join(map(str, choices))}.")


def fraction(value, key: str) -> float:
    """``value`` as a float in [0, 1], or a ConfigError naming ``key``."""
    try:
        ok = not isinstance(value, bool) and 0.0 <= float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{key} must be a number between 0 and 1, got {value!r}.")
    return float(value)


def writable_folder(folder, what: str):
    """Create ``folder`` if needed and check a file can be written in it, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what} cannot be written: {folder} is not a writable folder ({e.strerror or e}); "
                          "choose a folder you can write to.") from None
    return folder
