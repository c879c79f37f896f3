"""Typed option values shared by every command-line tool and by the training config check.

A ``Whole`` or ``Number`` declares what one option accepts (a range, finiteness, None allowed or not);
``.check(value, name)`` raises a ``ConfigError`` naming the option and the allowed range, and ``.arg(name)``
is the same check as an argparse ``type=`` converter, so a bad value ends as argparse's one-line error with
exit status 2 before any work starts. The exit statuses every CLI uses are declared here too.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# ---- exit statuses, the same in every CLI (README "Exit codes", docs/guide/bad_inputs.md) ------------------
EXIT_DONE = 0
EXIT_BAD_INPUT = 2        # a bad option, config value or input file: one sentence, nothing written
EXIT_NONFINITE = 3        # the run stopped itself: non-finite loss or gradient (checkpoints keep finite weights)
EXIT_SIGINT = 128 + 2     # Ctrl-C: saved, resumable (the shell's 128 + signal convention)
EXIT_SIGTERM = 128 + 15   # SIGTERM (kill, scancel): saved, resumable

INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1      # numpy's and Lightning's seed range


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Whole:
    """A whole number in [low, high] (either bound may be None: unbounded, but always within int64)."""

    low: int | None = None
    high: int | None = None
    none_ok: bool = False
    note: str = ""        # what a special value means, e.g. "(-1: all)"

    def describe(self) -> str:
        high = self.high if self.high is not None else None
        if self.low is not None and high is not None:
            text = f"a whole number between {self.low} and {high}"
        elif self.low is not None:
            text = f"a whole number of at least {self.low}"
        elif high is not None:
            text = f"a whole number of at most {high}"
        else:
            text = "a whole number"
        return text + (f" {self.note}" if self.note else "")

    def check(self, value, name: str):
        if value is None and self.none_ok:
            return None
        try:
            ok = not isinstance(value, bool) and int(value) == value
        except (TypeError, ValueError, OverflowError):
            ok = False
        if ok:
            v = int(value)
            ok = (self.low is None or v >= self.low) and (self.high is None or v <= self.high) and abs(v) <= INT64_MAX
        if not ok:
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}.")
        return int(value)

    def arg(self, name: str):
        return _converter(self, name, int)


@dataclass(frozen=True)
class Number:
    """A finite number in a range; ``low_open`` / ``high_open`` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none_ok: bool = False
    note: str = ""

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'greater than' if self.low_open else 'at least'} {_fmt(self.low)}")
        if self.high is not None:
            parts.append(f"{'less than' if self.high_open else 'at most'} {_fmt(self.high)}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "") + (f" {self.note}" if self.note else "")

    def check(self, value, name: str):
        if value is None and self.none_ok:
            return None
        try:
            v = float(value) if not isinstance(value, (bool, str)) else math.nan
        except (TypeError, ValueError, OverflowError):
            v = math.nan
        ok = math.isfinite(v)
        if ok and self.low is not None:
            ok = v > self.low if self.low_open else v >= self.low
        if ok and self.high is not None:
            ok = v < self.high if self.high_open else v <= self.high
        if not ok:
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}.")
        return v

    def arg(self, name: str):
        return _converter(self, name, float)


def _converter(kind, name: str, parse):
    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {kind.describe()}, got {text!r}") from None
        try:
            return kind.check(value, name)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"must be {kind.describe()}, got {text!r}") from None

    convert.__name__ = name  # argparse names the option itself: "argument --batch-size: must be ..."
    convert.kind = kind      # what it accepts, for tests and help texts
    return convert


# the values most tools share
COUNT = Whole(1)                         # batch sizes, steps, iterations, draws
SEED = Whole(0, SEED_MAX)
FRACTION = Number(0.0, 1.0)
ETA = Number(0.0, 1.0, note="(0: deterministic)")


# ---- a tool's options declared once: the library checks its dataclass, the CLI converts its flags -----------
def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def flag_type(kinds: dict, field: str):
    """The argparse ``type=`` of ``field``'s flag, from the tool's declaration ``kinds``."""
    return kinds[field].arg(flag(field))


def check_fields(opts, kinds: dict) -> None:
    """Each field of a tool's options (a dataclass) that ``kinds`` declares, checked as its flag would be, so
    the Python API refuses what the command line refuses (lists, e.g. ``mask_boxes``, item by item)."""
    for field, kind in kinds.items():
        value = getattr(opts, field)
        items = [value]
        while any(isinstance(v, (list, tuple)) for v in items):
            items = [w for v in items for w in (v if isinstance(v, (list, tuple)) else [v])]
        for item in items:
            kind.check(item, flag(field))


# ---- outputs: checked before any work, and nothing is left behind by the check ---------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _can_write_in(folder: Path) -> str | None:
    """None when a file can be created in the existing ``folder``, else why not (the probe file is removed)."""
    if not folder.is_dir():
        return f"{folder} is a file, not a writable folder"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        return f"{folder} is not a writable folder ({e.strerror or e})"
    return None


def _named(what: str, path: Path) -> str:
    return f"{what}{path}" if what.endswith("=") else f"{what} {path}"  # out=DIR, --output FILE


def check_output_file(path, what: str) -> Path:
    """Refuse, before any work, an output file that could not be written: its folder (or the nearest existing
    one above it, where the tool would create the rest) must be a writable folder, and the file itself, when
    it exists, a writable file. Creates nothing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{_named(what, path)} is an existing folder; name a file to write.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{_named(what, path)} cannot be written (permission denied); choose a file you can "
                          "write.")
    problem = _can_write_in(_nearest_existing(path.parent))
    if problem:
        raise ConfigError(f"{_named(what, path)} cannot be written: {problem}; choose a folder you can write to.")
    return path


def check_output_folder(folder, what: str) -> Path:
    """Refuse, before any work, an output folder that could not be created or written. Creates nothing."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{_named(what, folder)} is an existing file; pass a folder.")
    problem = _can_write_in(_nearest_existing(folder))
    if problem:
        raise ConfigError(f"{_named(what, folder)} cannot be written: {problem}; choose a folder you can write to.")
    return folder
