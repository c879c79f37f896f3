"""Files written whole or not at all: a temporary file in the same folder, fsynced, then renamed into place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems and platforms cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path, suffix: str = "") -> Path:
    """``.NAME.tmp-PID`` beside ``path`` (``suffix`` appended for writers that choose a format by it);
    ``src.train`` removes such files left by a killed job."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """``write(tmp)`` into a temporary file, fsync it, rename it to ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))
