"""Captions of a data folder, for ``cond=text``: one caption per item from a sidecar ``FILE.txt``, a CSV column,
or a key of each datalist entry (MRI).

Domain-agnostic, like ``src/labels.py`` for class labels: a datamodule lists its files, then asks here for each
file's caption. A file without a caption (no sidecar, no CSV row, an empty caption) is counted and dropped;
past ``datamodule.max_bad_fraction`` the run stops with one sentence naming a few of them.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from src.errors import DataError

log = logging.getLogger(__name__)

CAPTION_SOURCES = ("none", "auto", "sidecar", "csv", "datalist")
COMPOUND_SUFFIXES = (".nii.gz",)


class CaptionError(DataError):
    """Captions that cannot be read from the data as asked (missing past the limit, a bad CSV, ...)."""


def sidecar_path(path: str | Path) -> Path:
    """``cat.png`` -> ``cat.txt``; ``scan.nii.gz`` -> ``scan.txt``; a DICOM series folder ``S`` -> ``S.txt``."""
    path = Path(path)
    for suffix in COMPOUND_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + ".txt")
    if path.is_dir() or not path.suffix:
        return path.with_name(path.name + ".txt")
    return path.with_suffix(".txt")


def clean(text: str | None) -> str:
    """One line: surrounding white space stripped and inner runs of white space (newlines too) made one space."""
    return " ".join(str(text or "").split())


def read_sidecar(path: str | Path) -> tuple[str | None, str]:
    """(caption, why it is missing) of one file's sidecar."""
    side = sidecar_path(path)
    if not side.is_file():
        return None, f"no caption file {side.name} beside it"
    try:
        text = clean(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{side.name} cannot be read as UTF-8 text ({e})"
    return (text, "") if text else (None, f"{side.name} is empty")


def csv_table(csv_path: str | Path, column: str, file_column: str = "file") -> dict[str, str]:
    """``{relative file: caption}`` from a CSV whose ``file_column`` names each file relative to the data root."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise CaptionError(f"datamodule.captions_csv={csv_path} does not exist; pass a CSV with columns "
                           f"{file_column},{column}.")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for key in (file_column, column):
            if key not in header:
                raise CaptionError(f"{csv_path} has no column '{key}' (columns: {', '.join(header) or 'none'}); "
                                   "set datamodule.captions_column to the column that holds the captions.")
        return {Path(row[file_column]).as_posix(): clean(row[column]) for row in reader}


def _relative(f: str | Path, root: Path) -> str:
    f = Path(f)
    return (f.relative_to(root) if f.is_absolute() == root.is_absolute() else f).as_posix()


def file_captions(files: Sequence[str | Path], root: str | Path, source: str, csv_path: str | Path | None = None,
                  column: str = "caption") -> list[tuple[str | None, str]]:
    """(caption or None, why it is missing) per file, from sidecars or a CSV."""
    root = Path(root)
    if source == "sidecar":
        return [read_sidecar(f) for f in files]
    if source == "csv":
        table = csv_table(csv_path, column)
        out = []
        for f in files:
            rel = _relative(f, root)
            text = table.get(rel)
            out.append((text, "") if text else (None, f"no row in {Path(csv_path).name}" if text is None
                                               else f"an empty {column} in {Path(csv_path).name}"))
        return out
    raise CaptionError(f"datamodule.captions={source} cannot caption files of a folder; use sidecar or csv.")


def keep_captioned(names: Sequence[str], found: Sequence[tuple[str | None, str]], max_bad_fraction: float,
                   fix: str) -> tuple[list[int], list[str]]:
    """Indices of the items that have a caption, and their captions; the others are counted, and past
    ``max_bad_fraction`` a CaptionError names a few of them. ``fix`` says how to add the missing ones."""
    keep, captions, missing = [], [], []
    for i, (text, why) in enumerate(found):
        if text:
            keep.append(i)
            captions.append(text)
        else:
            missing.append(f"{names[i]} ({why})")
    total = len(found)
    if missing and (len(missing) / max(total, 1) > max_bad_fraction or not keep):
        raise CaptionError(f"{len(missing)} of {total} items have no caption (more than "
                           f"datamodule.max_bad_fraction={max_bad_fraction}), e.g. {'; '.join(missing[:3])}; "
                           f"{fix}, or raise datamodule.max_bad_fraction.")
    if missing:
        log.warning("Skipping %d of %d items without a caption, e.g. %s.", len(missing), total, missing[0])
    return keep, captions


def sidecar_fix(source: str) -> str:
    return {"sidecar": "write a FILE.txt beside each file",
            "csv": "add a row with a caption for each file to datamodule.captions_csv",
            "datalist": "add a caption under datamodule.captions_column to every datalist entry"}.get(
                source, "add captions")


class ShardCaption:
    """Wraps a shard decoder: adds the sample's ``caption`` from its ``txt`` member or the ``caption`` key of
    its ``json`` (picklable for workers). A sample without one is skipped and counted like an unreadable one."""

    def __init__(self, decode):
        self.decode = decode

    def __call__(self, sample: dict) -> dict:
        text = None
        if "txt" in sample:
            text = clean(sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else sample["txt"])
        if not text and "json" in sample:
            try:
                text = clean(json.loads(sample["json"]).get("caption"))
            except (ValueError, AttributeError):
                text = None
        if not text:
            raise ValueError("no caption (a txt member or a caption in its json); pack the shards with "
                             "`python -m datamodules.shards ... --captions sidecar`")
        item = dict(self.decode(sample))
        item["caption"] = text
        return item
