"""Webdataset shards: pack a folder with a domain's shard codec, and find the shards a run reads.

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
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from src.errors import DataError

from .captions import file_captions
from .items import split_indices
from .labels import csv_labels, folder_labels

log = logging.getLogger(__name__)

TRAIN_PREFIX, VAL_PREFIX = "shard-", "val-"
SUMMARY = "summary.json"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# a URL scheme webdataset can open (pipe:, http://, s3://, file://...); two letters at least, so C:\ is a path
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")
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


# ---- finding shards for a run ---------------------------------------------------------------------------
def is_url(path: str) -> bool:
    return bool(URL_RE.match(path)) and not path.startswith("file:")


def is_shard_path(path) -> bool:
    """True for a folder holding ``*.tar`` shards, a ``.tar`` file or brace pattern, or a URL."""
    if not path:
        return False
    path = str(path)
    if URL_RE.match(path) or "::" in path or re.search(r"\{[^}]*\.\.[^}]*\}", path):
        return True
    if path.lower().endswith(TAR_SUFFIXES):
        return True
    p = Path(path).expanduser()
    return p.is_dir() and any(q.name.lower().endswith(TAR_SUFFIXES) for q in p.iterdir() if q.is_file())


def expand(pattern: str) -> list[str]:
    # braces and '::' lists, exactly as webdataset reads them
    urls = expand_urls(pattern)
    return [u if is_url(u) else str(Path(u.removeprefix("file://")).expanduser()) for u in urls]


def resolve_shards(path: str, val_path: str | None = None) -> tuple[list[str], list[str]]:
    """(training URLs, validation URLs) for ``datamodule.path`` and ``val_path``; local shards must exist."""
    path = str(path)
    p = Path(path).expanduser()
    if not is_url(path) and p.is_dir():
        tars = sorted(str(q) for q in p.iterdir() if q.is_file() and q.name.lower().endswith(TAR_SUFFIXES))
        train = [t for t in tars if Path(t).name.startswith(TRAIN_PREFIX)] or \
            [t for t in tars if not Path(t).name.startswith(VAL_PREFIX)]
        val = [t for t in tars if Path(t).name.startswith(VAL_PREFIX)]
        if not train:
            raise DataError(f"datamodule.path={p} holds no training shards (only {VAL_PREFIX}*.tar); "
                            "pack the data with `python -m datamodules.shards`.")
    else:
        train, val = expand(path), []
    if val_path:
        v = Path(str(val_path)).expanduser()
        val = sorted(str(q) for q in v.iterdir() if q.is_file() and q.name.lower().endswith(TAR_SUFFIXES)) \
            if not is_url(str(val_path)) and v.is_dir() else expand(str(val_path))
    for what, urls in (("datamodule.path", train), ("datamodule.shards.val_path", val)):
        missing = [u for u in urls if not is_url(u) and not Path(u).is_file()]
        if missing:
            raise DataError(f"Shard {missing[0]} does not exist ({len(missing)} of {len(urls)} shards of "
                            f"{what} are missing); check the pattern, or pack the data with "
                            "`python -m datamodules.shards`.")
    return train, val


# the shard's file in a pipe: command: the last word ending in a tar suffix (quotes and spaces end a word)
_PIPE_SHARD = re.compile(r"([^\s'\"/]+(?:\.tar|\.tar\.gz|\.tgz))(?=['\"\s]|$)", re.IGNORECASE)


def shard_name(url: str) -> str:
    """A shard's file name: the last path part, or for ``pipe:CMD`` the tar file the command reads."""
    if url.startswith("pipe:"):
        hits = list(_PIPE_SHARD.finditer(url))
        return hits[-1].group(1) if hits else url
    return url.rsplit("/", 1)[-1]


def summary_source(url: str) -> str | None:
    """Where the writer's ``summary.json`` beside a shard is: a path, a URL, or for ``pipe:CMD`` the same
    command with the shard's file name replaced (None when the command names no tar file)."""
    if url.startswith("pipe:"):
        hits = list(_PIPE_SHARD.finditer(url))
        if not hits:
            return None
        hit = hits[-1]
        return url[:hit.start(1)] + SUMMARY + url[hit.end(1):]
    folder = url.rpartition("/")[0]
    return f"{folder or '.'}/{SUMMARY}"


def _damaged(source: str, why: str) -> dict:
    log.warning("%s is damaged (%s); ignoring it: samples are counted from the shards and class labels are "
                "unavailable. Repack with `python -m datamodules.shards` to rewrite it.", source, why)
    return {}


def _read_summary_file(source: str | None) -> dict:
    """The writer's summary beside the shards, {} when there is none; a damaged one is named in a warning and
    ignored (a shard's count must be a whole number, the classes a list of names)."""
    if source is None:
        return {}
    try:
        if is_url(source):
            with wds.gopen(source) as f:
                data = json.loads(f.read())
        else:
            local = Path(source)
            if not local.is_file():
                return {}
            data = json.loads(local.read_bytes().decode("utf-8"))
    except OSError as e:
        log.info("No usable %s at %s (%s); counting samples instead.", SUMMARY, source, e)
        return {}
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _damaged(source, f"{type(e).__name__}: {e}")
    if not isinstance(data, dict):
        return _damaged(source, f"holds a {type(data).__name__}, not an object")
    shards = data.get("shards", {})
    if not isinstance(shards, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("samples"), int) and v["samples"] >= 0 for v in shards.values()):
        return _damaged(source, "its 'shards' are not a map of shard name to a whole number of samples")
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, (str, int)) for c in classes)):
        return _damaged(source, "its 'classes' are not a list of names")
    return data


def _read_summary(source: str | None) -> dict:
    return _read_summary_file(source).get("shards", {})


def summary_classes(urls: list[str], path) -> list[str]:
    """The label map (``classes``) that the writer's ``summary.json`` beside the shards records."""
    sources = sorted({s for s in map(summary_source, urls) if s is not None})
    for source in sources:
        classes = _read_summary_file(source).get("classes")
        if classes:
            return [str(c) for c in classes]
    raise DataError(f"The shards of datamodule.path={path} carry no class labels (no classes in their "
                    f"{SUMMARY}); repack them with `python -m datamodules.shards ... --labels folders` "
                    "(or --labels csv), or train with cond=none.")


def count_samples(url: str) -> int:
    """Samples in one shard, grouped by key as webdataset groups them; local tars read headers only."""
    n, last = 0, None
    try:
        if is_url(url):
            stream = wds.gopen(url)
            tf = tarfile.open(fileobj=stream, mode="r|*")
        else:
            tf = tarfile.open(url, mode="r:*")  # random access: seeks over member data
        with tf:
            for ti in tf:
                key, _ = base_plus_ext(ti.name) if ti.isreg() else (None, None)
                if key is not None and key != last:
                    n, last = n + 1, key
    except (OSError, tarfile.TarError) as e:
        if n == 0:
            raise DataError(f"Could not read shard {url} to count its samples ({type(e).__name__}: {e}); "
                            f"check that it exists, or put the writer's {SUMMARY} beside it.") from None
        log.warning("Counted %d samples in shard %s before it failed to read: %s", n, url, e)
    return n


def shard_counts(urls: list[str]) -> list[int]:
    """Samples per shard: from ``summary.json`` beside the shards when it lists them, else by counting."""
    summaries: dict[str | None, dict] = {}
    counts = []
    for url in urls:
        source = summary_source(url)
        if source not in summaries:
            summaries[source] = _read_summary(source)
        info = summaries[source].get(shard_name(url))
        counts.append(int(info["samples"]) if info else count_samples(url))
    return counts
