"""Where a run's webdataset shards are and how many samples they hold.

``datamodule.path`` (and ``datamodule.val_path``) may be a folder of ``*.tar`` shards (``shard-*`` train,
``val-*`` validate, as ``python -m datamodules.shards`` writes them), one ``.tar`` file, a brace pattern
(``shards/shard-{000000..000009}.tar``), a ``::`` list or URLs (``pipe:``, ``http(s):``, ``s3:`` as webdataset
opens them). Sample counts and class labels come from the writer's ``summary.json`` beside the shards when it is
there and readable, else the shards are counted (a damaged summary is named and ignored).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from pathlib import Path

import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from src.errors import DataError

log = logging.getLogger(__name__)

TRAIN_PREFIX, VAL_PREFIX = "shard-", "val-"
SUMMARY = "summary.json"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")


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
