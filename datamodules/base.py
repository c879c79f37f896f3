"""What every domain's datamodule shares: a resumable per-rank sampler, loaders, and bad-input accounting.

Training data is one endless, deterministic stream per rank: epoch ``e`` is a permutation seeded by
``(seed, e)``, split across ranks like ``DistributedSampler``. Its position is derived from the restored
``global_step``, so a resumed run sees exactly the samples the uninterrupted run would have seen, and every
rank runs the same number of steps (no DDP hang on uneven data). When ``datamodule.path`` names webdataset
shards, the same promises hold for the streaming loaders of ``datamodules/stream.py``. The sampler and item
pieces live in ``datamodules/items.py`` and are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from src.errors import ConfigError, DataError, positive_int

from .captions import CAPTION_SOURCES, ShardCaption, file_captions, keep_captioned, sidecar_fix
from .items import (
    BadInputCounter,
    FileItems,
    ReproducibleItems,
    ResumableSampler,
    Subset,
    call_seeded,
    probe_folder,
    split_indices,
)
from .labels import csv_labels, folder_labels
from .shard_sources import is_shard_path, summary_classes
from .stream import ShardSettings, ShardSource

log = logging.getLogger(__name__)


LABEL_SOURCES = ("none", "auto", "folders", "csv")


class ShardLabel:
    """Wraps a domain's shard decoder: adds the sample's class ``label`` from its ``json`` member, checked
    against the label map (picklable for workers). A missing or out-of-range label is a DataError."""

    def __init__(self, decode, num_classes: int):
        self.decode, self.num_classes = decode, num_classes

    def __call__(self, sample: dict) -> dict:
        where = f"sample {sample.get('__key__')} of shard {sample.get('__url__')}"
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except ValueError as e:
            raise DataError(f"The json member of {where} is not JSON ({e}); repack the shards.") from None
        label = meta.get("label")
        if label is None:
            raise DataError(f"{where} carries no class label in its json; pack labelled shards with "
                            "`python -m datamodules.shards ... --labels folders` (or --labels csv).")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < self.num_classes:
            raise DataError(f"{where} has label {label!r}, outside the {self.num_classes} classes "
                            f"(0..{self.num_classes - 1}) of the shards' summary.json; repack the shards.")
        item = dict(self.decode(sample))
        item["label"] = label
        return item


class DiffusionDataModule(pl.LightningDataModule):
    """Base class: subclasses build ``self.train_set`` / ``self.val_set`` in ``setup``, set ``data_shape``.

    Class labels (``cond=class``, docs/guide/conditioning.md): ``labels`` is ``none``, ``folders`` (the
    first-level subfolder of each file), ``csv`` (``labels_column`` of ``labels_csv``, whose ``file`` column
    names each file relative to ``datamodule.path``) or ``auto`` (csv when ``labels_csv`` is given, else
    folders); shards carry the label in each sample's json and the class names in ``summary.json``.
    ``classes`` is the label map (index = label), known before training so it is saved in the checkpoint.
    A domain that reads labels from its folders implements ``folder_classes``.
    """

    def __init__(self, batch_size: int = 32, num_workers: int = 2, val_batch_size: int | None = None,
                 pin_memory: bool = True, persistent_workers: bool = True, seed: int = 0,
                 shards: dict | None = None, labels: str | None = "none", labels_csv: str | None = None,
                 labels_column: str = "label", captions: str | None = "none", captions_csv: str | None = None,
                 captions_column: str = "caption"):
        super().__init__()
        labels = "none" if labels is None else str(labels)
        if labels not in LABEL_SOURCES:
            raise ConfigError(f"datamodule.labels must be one of {', '.join(LABEL_SOURCES)}, got '{labels}'.")
        if labels == "auto":
            labels = "csv" if labels_csv else "folders"
        if labels == "csv" and not labels_csv:
            raise ConfigError("datamodule.labels=csv needs datamodule.labels_csv=FILE.csv (columns file,"
                              f"{labels_column}).")
        self.label_source, self.labels_column = labels, str(labels_column)
        self.labels_csv = None if labels_csv is None else Path(str(labels_csv)).expanduser()
        self._classes: list[str] | None = None
        self.caption_source_given = "none" if captions is None else str(captions)
        self.caption_source = self._caption_source(captions, captions_csv)
        self.captions_csv = None if captions_csv is None else Path(str(captions_csv)).expanduser()
        self.captions_column = str(captions_column)
        self._captions: list[str] | None = None
        batch_size = positive_int(batch_size, "datamodule.batch_size")
        num_workers = positive_int(num_workers, "datamodule.num_workers", minimum=0)
        if val_batch_size is not None:
            val_batch_size = positive_int(val_batch_size, "datamodule.val_batch_size")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_batch_size = val_batch_size or batch_size
        self.pin_memory, self.persistent_workers, self.seed = pin_memory, persistent_workers, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        # streaming from webdataset shards (datamodules/stream.py) when datamodule.path names shards
        self.shard_settings = ShardSettings.from_config(shards)
        self.stream = None

    @property
    def data_shape(self) -> list[int]:
        raise NotImplementedError

    def _rank_world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (0, 1) if t is None else (t.global_rank, t.world_size)

    def _loader_kwargs(self) -> dict:
        workers = self.num_workers
        return dict(num_workers=workers, pin_memory=self.pin_memory and torch.cuda.is_available(),
                    persistent_workers=self.persistent_workers and workers > 0)

    # ---- captions (cond=text) -----------------------------------------------------------------------------
    @staticmethod
    def _caption_source(captions, captions_csv) -> str:
        source = "none" if captions is None else str(captions)
        if source not in CAPTION_SOURCES:
            raise ConfigError(f"datamodule.captions must be one of {', '.join(CAPTION_SOURCES)}, got '{source}'.")
        if source == "csv" and not captions_csv:
            raise ConfigError("datamodule.captions=csv needs datamodule.captions_csv=FILE.csv (columns file,caption).")
        if source == "auto":
            source = "csv" if captions_csv else "sidecar"  # a datalist .json path: see the MRI datamodule
        return source

    @property
    def has_captions(self) -> bool:
        return self.caption_source != "none"

    def no_builtin_captions(self) -> DataError:
        return DataError("cond=text needs captioned data: pass datamodule.path with a FILE.txt beside each file "
                         "(or datamodule.captions_csv); the built-in data of this domain has no captions.")

    def caption_items(self, items: list, root: Path) -> tuple[list[int], list[str]]:
        """Indices of ``items`` (``_scan``'s records) that have a caption, and their captions."""
        paths = [self.item_path(item) for item in items]
        found = file_captions(paths, root, self.caption_source, self.captions_csv, self.captions_column)
        names = [_relative_name(p, root) for p in paths]
        keep, captions = keep_captioned(names, found, float(getattr(self, "max_bad_fraction", 0.0)),
                                        sidecar_fix(self.caption_source))
        log.info("Captions from %s for %d items.", "sidecar .txt files" if self.caption_source == "sidecar" else
                 f"column {self.captions_column} of {self.captions_csv}", len(keep))
        return keep, captions

    def item_extras(self, labels: list[int] | None, idx: Sequence[int]) -> dict:
        """The ``labels=`` and ``captions=`` of a ``FileItems`` subset ``idx`` of ``labelled_files``' items."""
        return {"labels": None if labels is None else [labels[i] for i in idx],
                "captions": None if self._captions is None else [self._captions[i] for i in idx]}

    def caption_samples(self, num: int) -> list[str]:
        """Up to ``num`` distinct captions of the validation (else training) items, for sample previews."""
        out: list[str] = []
        for ds in (self.val_set, self.train_set):
            for c in _dataset_captions(ds) or []:
                if c not in out:
                    out.append(c)
                if len(out) >= num:
                    return out
        return out

    # ---- class labels -----------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str] | None:
        """The class names (index = label), or None without labels; read once, before ``setup``."""
        if self.label_source == "none":
            return None
        if self._classes is None:
            self._classes = self.shard_classes() if self.is_streaming else self.folder_classes()
        return self._classes

    def folder_classes(self) -> list[str]:
        """The label map of ``datamodule.path`` (a subclass also keeps each file's label for ``setup``)."""
        raise DataError(f"{type(self).__name__} cannot read class labels from a folder yet; pack labelled "
                        "shards (`python -m datamodules.shards ... --labels folders`) or use cond=none.")

    @staticmethod
    def item_path(item) -> Path:
        """The file of one item ``_scan`` lists (the item itself, unless a subclass lists richer records)."""
        return item

    def labelled_files(self) -> tuple[list, list[int] | None]:
        """The readable items of ``datamodule.path`` (the subclass's ``_scan``) and their class labels (None
        without labels), listed once. Sets the label map on the way."""
        if getattr(self, "_listing", None) is None:
            root = Path(self.path).expanduser()
            items = self._scan(root)
            if self.has_captions:  # items without a caption are dropped (counted) before labels are read
                keep, self._captions = self.caption_items(items, root)
                items = [items[i] for i in keep]
            found = self.file_labels(root, [self.item_path(item) for item in items])
            if found is not None:
                self._classes = found[0]
            self._listing = (items, None if found is None else found[1])
        return self._listing

    def split_files(self) -> tuple[list, list[int] | None, list[int], list[int]]:
        """``labelled_files`` with the train and validation indices of ``val_fraction`` (seeded)."""
        files, labels = self.labelled_files()
        train_idx, val_idx = split_indices(len(files), self.val_fraction, self.seed)
        return files, labels, train_idx, val_idx

    def labelled_folder_classes(self) -> list[str]:
        """``folder_classes`` of a datamodule that lists its items with ``labelled_files``."""
        if not self.path:
            raise self.no_builtin_labels()
        self.labelled_files()
        return self._classes

    def file_labels(self, root: Path, files: Sequence[Path]) -> tuple[list[str], list[int]] | None:
        """(class names, label per file) for ``files`` under ``root`` as ``labels`` asks, or None."""
        if self.label_source == "none":
            return None
        if self.label_source == "csv":
            classes, labels = csv_labels(self.labels_csv, files, root, column=self.labels_column)
        else:
            classes, labels = folder_labels(root, files)
        where = f"column {self.labels_column} of {self.labels_csv}" if self.label_source == "csv" else \
            f"the subfolders of {root}"
        if len(classes) == 1:
            log.warning("All %d files have the one class '%s' (from %s); class conditioning needs two or more.",
                        len(files), classes[0], where)
        log.info("Class labels from %s: %d classes (%s%s).", where, len(classes), ", ".join(classes[:10]),
                 ", ..." if len(classes) > 10 else "")
        return classes, labels

    def no_builtin_labels(self) -> DataError:
        return DataError(f"datamodule.labels={self.label_source} needs a labelled datamodule.path (a folder "
                         "with one subfolder per class, or a CSV of labels); the built-in data has no classes.")

    def shard_classes(self) -> list[str]:
        return summary_classes(self._shard_stream().train_urls, self.path)

    def item_decoder(self, train: bool):
        """``shard_decoder`` plus the sample's class label (or caption) when this datamodule reads them."""
        decode = self.shard_decoder(train)
        if self.has_captions:
            decode = ShardCaption(decode)
        return decode if self.label_source == "none" else ShardLabel(decode, len(self.classes))

    # ---- webdataset shards: a subclass stores datamodule.path in self.path and implements shard_decoder ----
    @property
    def is_streaming(self) -> bool:
        if getattr(self, "_streaming", None) is None:  # decided once: it may list a large folder
            self._streaming = is_shard_path(getattr(self, "path", None))
        return self._streaming

    def shard_decoder(self, train: bool):
        """A picklable callable: one shard sample ``{ext: bytes, ...}`` -> one item ``{"x": tensor}``."""
        raise DataError(f"{type(self).__name__} cannot read webdataset shards yet; "
                        "pass a folder as datamodule.path.")

    def _shard_stream(self):
        if self.stream is None:
            self.stream = ShardSource(self)
        return self.stream

    def state_dict(self) -> dict:
        return self.stream.state_dict() if self.stream is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.is_streaming:
            self._shard_stream().load_state_dict(state)

    def train_dataloader(self):
        if self.is_streaming:
            return self._shard_stream().train_loader()
        rank, world = self._rank_world()
        t = getattr(self, "trainer", None)
        accum = t.accumulate_grad_batches if t is not None else 1
        step = t.global_step if t is not None else 0
        # samples this rank consumed before the (possibly restored) global step
        start = step * accum * self.batch_size
        sampler = ResumableSampler(len(self.train_set), self.seed, rank, world, shuffle=True, start=start)
        return DataLoader(ReproducibleItems(self.train_set, self.seed), batch_size=self.batch_size,
                          sampler=sampler, drop_last=True,
                          **self._loader_kwargs())

    def val_dataloader(self):
        if self.is_streaming:
            return self._shard_stream().val_loader()
        if self.val_set is None or len(self.val_set) == 0:
            return []
        rank, world = self._rank_world()
        n = len(self.val_set)
        # the same number of items on every rank (wrapping round, as DistributedSampler pads), so collectives
        # in validation (sharded forward passes, metric sync) never wait on a rank that ran out of batches
        indices = [(rank + k * world) % n for k in range(math.ceil(n / world))]
        return DataLoader(Subset(self.val_set, indices), batch_size=self.val_batch_size, shuffle=False,
                          **self._loader_kwargs())


def _relative_name(path, root: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.name


def _dataset_captions(ds) -> list[str] | None:
    """The captions a dataset (``FileItems``, a ``Subset`` of one, or any with ``captions``) holds, in order."""
    if ds is None:
        return None
    if isinstance(ds, Subset):
        if callable(getattr(ds.base, "caption", None)):  # captions computed per item (the built-in images)
            return [ds.base.caption(i) for i in ds.indices]
        inner = _dataset_captions(ds.base)
        return None if inner is None else [inner[i] for i in ds.indices]
    caps = getattr(ds, "captions", None)
    if caps is None:
        return None
    return list(caps() if callable(caps) else caps)


# DataError lives in src.errors; the names below keep ``from datamodules.base import ...`` working
__all__ = ["BadInputCounter", "DataError", "DiffusionDataModule", "FileItems", "LABEL_SOURCES", "ReproducibleItems",
           "ResumableSampler", "ShardLabel", "Subset", "call_seeded", "probe_folder", "split_indices"]
