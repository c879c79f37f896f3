"""Webdataset shards: pack a folder with a domain's shard codec (finding the shards a run reads, and counting
their samples, is ``datamodules/shard_sources.py``).

The command line (``datamodules/shards.py``, an entry point that asks the domain registry for the codec):

    python -m datamodules.shards --domain image --src ~/my_pngs --out ~/my_shards [--max-count 1000]
        [--max-size 256MB] [--val-fraction 0.05] [--seed 0] [--overwrite]
        [--labels none|folders|csv] [--labels-csv FILE.csv] [--labels-column label]

writes ``shard-000000.tar ...`` (training), ``val-000000.tar ...`` (validation: the same split, seed and
skipped files as training from the folder with ``datamodule.val_fraction`` and ``seed``) and ``summary.json``
(samples per shard, what was skipped and why). Each sample is the original encoded bytes of one file
(``KEY.png``) plus ``KEY.json`` with its metadata (``path`` relative to ``--src``, and what the domain adds).
Shards close at ``--max-count`` samples or before passing ``--max-size`` bytes. Training reads them with
``datamodule.path=OUT`` (see ``datamodules/stream.py``). With ``--labels folders`` (the first-level subfolder
of each file) or ``--labels csv`` every sample's json also holds its class ``label`` (index) and ``class``
(name), and ``summary.json`` the label map ``classes``, which ``cond=class`` reads.

What a domain provides for shards (its ``DOMAIN.shard_codec`` names the module behind ``--domain``):

- module level, for the writer:
  ``EXTENSIONS``: the file suffixes it packs (lower case, with the dot, e.g. ``{".png", ".nii.gz"}``);
  optional ``pack_sample(path: Path) -> (members: dict[ext, bytes], metadata: dict)``, raising ``OSError`` /
  ``ValueError`` for a file it cannot read (skipped and listed in the summary); default: the file's own bytes
  under its extension and no metadata; optional ``list_items(root: Path) -> list[Path]`` when an item is not
  one file (e.g. a DICOM series folder); default: every file under ``root`` with one of ``EXTENSIONS``.
- on its datamodule, for training: ``self.path`` holds ``datamodule.path``; ``setup()`` returns early when
  ``self.is_streaming``; ``shard_decoder(train: bool)`` returns a picklable callable that turns one sample
  (``{"__key__": ..., ext: bytes, "json": bytes}``) into one training item ``{"x": tensor}`` with the same
  transforms as the folder path. Random augmentations must use torch/numpy global RNGs, which the reader
  seeds per sample so that a resumed run augments as the uninterrupted one did.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import webdataset as wds

from src.errors import DataError

from .captions import file_captions
from .items import split_indices
from .labels import csv_labels, folder_labels
from .shard_sources import SUMMARY, TRAIN_PREFIX, VAL_PREFIX

log = logging.getLogger(__name__)

# a URL scheme webdataset can open (pipe:, http://, s3://, file://...); two letters at least, so C:\ is a path
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def matched_extension(name: str, extensions) -> str | None:
    """The longest of ``extensions`` that ``name`` ends with (so ``a.nii.gz`` is ``.nii.gz``, not ``.gz``)."""
    low = name.lower()
    hits = [e for e in extensions if low.endswith(e)]
    return max(hits, key=len) if hits else None


def list_files(root: Path, extensions) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and matched_extension(p.name, extensions))


def default_pack(path: Path, extensions) -> tuple[dict[str, bytes], dict]:
    return {matched_extension(path.name, extensions).lstrip("."): path.read_bytes()}, {}


# ---- writing ------------------------------------------------------------------------------------------
def parse_size(text: str | int | float) -> int:
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    try:
        size = float(m.group(1)) * SIZE_UNITS[m.group(2).upper()] if m else math.nan
    except (ValueError, KeyError):
        size = math.nan
    if not 1 <= size <= 2**63 - 1:  # NaN, inf, 0 and "1.2.3" alike
        raise DataError(f"--max-size {text!r} is not a size of at least one byte; write e.g. 256MB, 1GB or 1000000.")
    return int(size)


def tar_bytes(key: str, members: dict[str, bytes]) -> int:
    """Bytes a sample adds to a tar: per member a 512-byte header (and a pax header for a name over 100
    bytes) plus its data padded to 512."""
    total = 0
    for ext, data in members.items():
        name = len(f"{key}.{ext}".encode())
        total += 512 + -(-len(data) // 512) * 512 + (512 + -(-(name + 32) // 512) * 512 if name > 100 else 0)
    return total


def tar_file_size(member_bytes: int) -> int:
    """Size of a tar holding ``member_bytes``: two zero blocks at the end, padded to 10240-byte records."""
    return -(-(member_bytes + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def sample_key(rel: str, ext: str | None, taken: set[str]) -> str:
    """Relative path without extension; dots become '_' because webdataset splits keys at the first dot."""
    stem = rel[: len(rel) - len(ext)] if ext else rel
    key = stem.replace(".", "_")
    if key.startswith("__"):  # webdataset skips members named like __meta__
        key = "k" + key
    base, n = key, 1
    while key in taken:
        key, n = f"{base}_{n}", n + 1
    taken.add(key)
    return key


@dataclass
class _ShardSink:
    """Writes numbered shards ``PREFIX%06d.tar``, each renamed into place only once complete."""

    out: Path
    prefix: str
    max_count: int
    max_size: int
    shards: dict[str, dict] = field(default_factory=dict)
    _writer: Any = None
    _tmp: Path | None = None
    _name: str = ""
    _count: int = 0
    _size: int = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        size = tar_bytes(key, members)
        full = self._count >= self.max_count or tar_file_size(self._size + size) > self.max_size
        if self._writer is not None and full:
            self.close()
        if self._writer is None:
            self._name = f"{self.prefix}{len(self.shards):06d}.tar"
            self._tmp = self.out / f".{self._name}.partial"
            # a fixed integer mtime: byte-identical shards on every run, and no pax header per member
            self._writer = wds.TarWriter(str(self._tmp), encoder=False, mtime=0)
            self._count = self._size = 0
        self._writer.write({"__key__": key, **members})
        self._count, self._size = self._count + 1, self._size + size

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        final = self.out / self._name
        self._tmp.replace(final)
        self.shards[self._name] = {"samples": self._count, "bytes": final.stat().st_size}
        self._writer = None


def existing_outputs(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    prefixes = (TRAIN_PREFIX, VAL_PREFIX, f".{TRAIN_PREFIX}", f".{VAL_PREFIX}")
    return sorted(p for p in out.iterdir()
                  if p.name == SUMMARY or (p.name.startswith(prefixes) and ".tar" in p.name))


def check_codec(mod: ModuleType, domain: str) -> ModuleType:
    """``mod`` when it implements the shard interface above, else a DataError naming the domain."""
    if not getattr(mod, "EXTENSIONS", None):
        raise DataError(f"domain {domain} has no shard support yet ({mod.__name__} defines no EXTENSIONS).")
    return mod


def pack_folder(codec: ModuleType, domain: str, src: str | Path, out: str | Path, max_count: int = 1000,
                max_size: int | str = "256MB", val_fraction: float = 0.05, seed: int = 0,
                overwrite: bool = False, labels: str = "none", labels_csv: str | Path | None = None,
                labels_column: str = "label", captions: str = "none", captions_csv: str | Path | None = None,
                captions_column: str = "caption") -> dict:
    """Pack every readable item under ``src`` into shards under ``out`` with the shard ``codec`` (the module
    of the interface above) of ``domain``; returns (and writes) the summary. ``datamodules.shards.write_shards``
    does the same for a domain named in the registry.

    ``labels``: ``none``, ``folders`` or ``csv`` (``labels_column`` of ``labels_csv``) adds class labels;
    ``captions``: ``none``, ``sidecar`` or ``csv`` adds a ``KEY.txt`` caption (files without one are skipped)."""
    mod = check_codec(codec, domain)
    src, out = Path(src).expanduser(), Path(out).expanduser()
    max_size = parse_size(max_size)
    if max_count < 1 or max_size < 1:
        raise DataError("--max-count and --max-size must be positive.")
    if not src.is_dir():
        raise DataError(f"--src {src} is not a folder; pass the folder of {domain} files to pack.")
    if labels not in ("none", "folders", "csv"):
        raise DataError(f"--labels must be none, folders or csv, got '{labels}'.")
    if labels == "csv" and not labels_csv:
        raise DataError("--labels csv needs --labels-csv FILE.csv (columns file,label).")
    if captions not in ("none", "sidecar", "csv"):
        raise DataError(f"--captions must be none, sidecar or csv, got '{captions}'.")
    if captions == "csv" and not captions_csv:
        raise DataError("--captions csv needs --captions-csv FILE.csv (columns file,caption).")
    old = existing_outputs(out)
    if old and not overwrite:
        names = ", ".join(p.name for p in old[:3]) + (", ..." if len(old) > 3 else "")
        raise DataError(f"{out} already holds shards ({names}); pass --overwrite to replace them "
                        "or choose another --out.")
    extensions = set(mod.EXTENSIONS)
    items = mod.list_items(src) if hasattr(mod, "list_items") else list_files(src, extensions)
    if not items:
        raise DataError(f"No {domain} files ({', '.join(sorted(extensions))}) found under {src}.")

    def pack(path: Path):
        if hasattr(mod, "pack_sample"):
            return mod.pack_sample(path)
        return default_pack(path, extensions)

    # pass 1 decides what is readable, so the train/val split is the folder path's split over the same files
    good, skipped = [], []
    for path in items:
        try:
            pack(path)
            good.append(path)
        except (OSError, ValueError) as e:
            skipped.append({"path": path.relative_to(src).as_posix(), "reason": str(e) or type(e).__name__})
    if not good:
        raise DataError(f"None of the {len(items)} files under {src} could be read, e.g. "
                        f"{skipped[0]['path']} ({skipped[0]['reason']}).")
    caption_of: list[str] | None = None
    if captions != "none":  # files without a caption are skipped, as unreadable ones are
        found = file_captions(good, src, captions, captions_csv, captions_column)
        skipped += [{"path": p.relative_to(src).as_posix(), "reason": why}
                    for p, (text, why) in zip(good, found) if not text]
        caption_of = [text for text, _ in found if text]
        good = [p for p, (text, _) in zip(good, found) if text]
        if not good:
            raise DataError(f"None of the files under {src} has a caption, e.g. {skipped[-1]['path']} "
                            f"({skipped[-1]['reason']}); add them or pack with --captions none.")
    train_idx, val_idx = split_indices(len(good), val_fraction, seed)
    classes = label_of = None
    if labels != "none":
        classes, label_of = (folder_labels(src, good) if labels == "folders" else
                             csv_labels(Path(labels_csv).expanduser(), good, src, column=labels_column))

    out.mkdir(parents=True, exist_ok=True)
    for p in old:
        p.unlink()
    taken: set[str] = set()
    splits = {}
    for split, prefix, idx in (("train", TRAIN_PREFIX, train_idx), ("val", VAL_PREFIX, val_idx)):
        sink = _ShardSink(out, prefix, max_count, max_size)
        for i in idx:
            path = good[i]
            rel = path.relative_to(src).as_posix()
            members, meta = pack(path)
            key = sample_key(rel, matched_extension(path.name, extensions), taken)
            meta = {"path": rel, **meta}
            if classes is not None:
                meta["label"], meta["class"] = label_of[i], classes[label_of[i]]
            if caption_of is not None:
                members = {**members, "txt": caption_of[i].encode("utf-8")}
            sink.write(key, {**members, "json": json.dumps(meta, sort_keys=True).encode()})
        sink.close()
        splits[split] = sink.shards
    summary = {
        "domain": domain, "source": str(src), "max_count": max_count, "max_size": max_size,
        "val_fraction": val_fraction, "seed": seed,
        "samples": {k: sum(s["samples"] for s in v.values()) for k, v in splits.items()},
        "shards": {name: {"split": split, **info} for split, v in splits.items() for name, info in v.items()},
        "skipped": skipped,
    }
    if classes is not None:
        summary["classes"] = classes
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary
