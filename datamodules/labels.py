"""Class labels of a data folder, for ``cond=class``: the first-level subfolder of each file, or a CSV column.

Domain-agnostic: a datamodule lists its files, then asks here for the label map (class names, index =
label) and each file's label; the names go into the checkpoint as ``cond.classes``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from src.errors import DataError
from src.fileio import read_csv


class LabelError(DataError):
    """Labels that cannot be read from the data as asked."""


def _natural_key(name: str):
    """'2' before '10', 'cat' before 'dog': digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def class_names(names) -> list[str]:
    """The sorted, de-duplicated class names (index = label)."""
    return sorted(set(names), key=_natural_key)


def folder_labels(root: str | Path, files: Sequence[str | Path]) -> tuple[list[str], list[int]]:
    """Classes from the first-level subfolder of each file (``root/3/x.png`` is class ``3``)."""
    root = Path(root)
    names = []
    for f in files:
        rel = Path(f).relative_to(root) if Path(f).is_absolute() == root.is_absolute() else Path(f)
        if len(rel.parts) < 2:
            raise LabelError(f"{Path(root) / rel} lies directly in datamodule.path={root}; with cond=class every "
                             "file must sit in a class subfolder (root/CLASS/file), or give a CSV of labels "
                             "(datamodule.labels_csv).")
        names.append(rel.parts[0])
    classes = class_names(names)
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[n] for n in names]


def csv_labels(csv_path: str | Path, files: Sequence[str | Path], root: str | Path, column: str = "label",
               file_column: str = "file") -> tuple[list[str], list[int]]:
    """Classes from ``column`` of a CSV whose ``file_column`` names each file relative to ``root``."""
    csv_path, root = Path(csv_path), Path(root)
    if not csv_path.is_file():
        raise LabelError(f"Label file {csv_path} does not exist; pass a CSV with columns {file_column},{column}.")
    try:
        header, rows = read_csv(csv_path, "Label file")
    except DataError as e:
        raise LabelError(str(e)) from None
    for key in (file_column, column):
        if key not in header:
            raise LabelError(f"{csv_path} has no column '{key}' (columns: {', '.join(header) or 'none'}); "
                             "name the file and label columns.")
    rows = [{(k or "").strip(): v for k, v in row.items()} for row in rows]
    table = {Path(row[file_column] or "").as_posix(): (row[column] or "").strip() for row in rows}
    missing = [rel for rel in table if not (root / rel).exists()]
    if missing:
        raise LabelError(f"{csv_path} names {len(missing)} files that are not under {root}, e.g. {missing[0]}; "
                         f"fix their {file_column} paths (relative to {root}) or remove their rows.")
    names = []
    for f in files:
        rel = (Path(f).relative_to(root) if Path(f).is_absolute() == root.is_absolute() else Path(f)).as_posix()
        if rel not in table or not table[rel]:
            raise LabelError(f"{csv_path} gives no {column} for {rel}; add a row for every file (or remove the file).")
        names.append(table[rel])
    classes = class_names(names)
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[n] for n in names]
