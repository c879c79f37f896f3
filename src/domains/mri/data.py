"""MRI: NIfTI files, DICOM series or a datalist JSON (or built-in phantoms), as 3D volumes or 2D slices.

``mode=volume`` yields ``{"x": (C, D0, D1, D2)}``, ``mode=slice`` yields ``{"x": (C, H, W)}`` slices along
``slice_axis`` of the RAS-oriented volume, near-empty slices skipped. ``C`` is 1
(magnitude) or 2 (real and imaginary parts, ``channels=2``, for complex-valued data). Values follow the convention in
``transforms`` (zero-anchored percentile scaling to [-1, 1]).

Every volume is read, checked and preprocessed once at setup and kept in a MONAI ``CacheDataset`` (memory)
or ``PersistentDataset`` (``cache_dir``, on disk); unusable volumes are skipped, counted and named in the
local log, and too many of them stop the run (``max_bad_fraction``). Nothing here logs header fields.
``path`` may also name webdataset shards of NIfTI files (``python -m datamodules.shards --domain mri``,
decoded per sample by ``shards``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose
from torch.utils.data import Dataset

from datamodules.base import BadInputCounter, DiffusionDataModule, split_indices
from datamodules.captions import CaptionError, clean, file_captions, keep_captioned, sidecar_fix
from datamodules.labels import class_names
from src.errors import DataError, fraction, positive_int

from .io import NIFTI_SUFFIXES, check_headers, discover, load_datalist
from .shards import MRIShardDecoder
from .transforms import (
    KEY,
    Prepare,
    augment_chain,
    augment_item,
    load_size,
    prepare_chain,
    slice_foreground,
)

log = logging.getLogger(__name__)

MODES = ("volume", "slice")
# the name of the intensity convention (transforms docstring), recorded in checkpoints' run_config
INTENSITY_SCALING = "zero_anchored_percentile"


class CachedItems(Dataset):
    """Training or validation items cut from the cached volumes: whole volumes, or one slice each.

    ``index`` holds ``(volume, slice)`` pairs (slice None in volume mode). The MONAI random transforms are
    reseeded from numpy's global RNG on every draw, which ``ReproducibleItems`` seeds per draw, so crops
    and flips replay exactly on resume.
    """

    def __init__(
        self, volumes: Dataset, index: Sequence[tuple[int, int | None]], axis: int, augment: Compose,
        labels: Sequence[int] | None = None, captions: Sequence[str] | None = None,
    ):
        self.volumes, self.index, self.axis, self.augment = volumes, list(index), axis, augment
        self.labels = None if labels is None else list(labels)  # class label per volume (cond=class)
        self.volume_captions = None if captions is None else list(captions)  # caption per volume (cond=text)

    def captions(self) -> list[str] | None:
        """Each item's caption (its volume's), in item order; None without captions."""
        if self.volume_captions is None:
            return None
        return [self.volume_captions[v] for v, _ in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, s = self.index[i]
        item = augment_item(self.volumes[v][KEY], s, self.axis, self.augment)
        if self.labels is not None:
            item["label"] = self.labels[v]
        if self.volume_captions is not None:
            item["caption"] = self.volume_captions[v]
        return item


class MRIDataModule(DiffusionDataModule):
    def __init__(
        self,
        path: str | None = None,
        mode: str = "volume",
        shape: Sequence[int] = (32, 32, 32),
        spacing: Sequence[float | None] | None = (6.0, 6.0, 6.0),
        channels: int = 1,
        slice_axis: int = 2,
        select_channel: int | None = None,
        datalist_key: str = "training",
        datalist_val_key: str = "validation",
        intensity_scaling: str = "zero_anchored_percentile",
        intensity_percentile: float = 99.5,
        foreground_threshold: float = 0.1,
        foreground_margin: int = 2,
        min_slice_foreground: float = 0.1,
        crop_margin: float = 0.1,
        random_flip: bool = True,
        val_fraction: float = 0.1,
        max_bad_fraction: float = 0.05,
        builtin_size: int = 96,
        builtin_depth: int | None = None,
        cache_dir: str | None = None,
        cache_workers: int = 2,
        **kw,
    ):
        super().__init__(**kw)
        if mode not in MODES:
            raise DataError(f"datamodule.mode must be one of {', '.join(MODES)}, got '{mode}'.")
        want = 3 if mode == "volume" else 2
        # which sizes the network takes is the backbone's to say (src.train checks its size_multiple)
        if len(shape) != want or any(int(n) != n or n < 1 for n in shape):
            raise DataError(f"datamodule.shape must be {want} positive whole sizes for mode={mode}, got "
                            f"{list(shape)}.")
        if channels not in (1, 2):
            raise DataError(
                f"datamodule.channels must be 1 (magnitude) or 2 (real, imaginary), got {channels}."
            )
        if slice_axis not in (0, 1, 2):
            raise DataError(f"datamodule.slice_axis must be 0, 1 or 2 (RAS axes), got {slice_axis}.")
        if spacing is not None and len(spacing) != 3:
            raise DataError(
                f"datamodule.spacing must be three sizes in mm (null entries keep the native "
                f"spacing), got {spacing}."
            )
        if intensity_scaling != INTENSITY_SCALING:
            raise DataError(
                f"datamodule.intensity_scaling must be {INTENSITY_SCALING} (the only convention), "
                f"got '{intensity_scaling}'."
            )
        if not 0 < intensity_percentile <= 100:
            raise DataError(
                f"datamodule.intensity_percentile must be in (0, 100], got {intensity_percentile}."
            )
        val_fraction = fraction(val_fraction, "datamodule.val_fraction")
        max_bad_fraction = fraction(max_bad_fraction, "datamodule.max_bad_fraction")
        builtin_size = positive_int(builtin_size, "datamodule.builtin_size")
        self.path, self.mode, self.shape = path, mode, [int(n) for n in shape]
        self.spacing = None if spacing is None else [None if s is None else float(s) for s in spacing]
        self.channels, self.slice_axis, self.select_channel = channels, slice_axis, select_channel
        self.datalist_key, self.datalist_val_key = datalist_key, datalist_val_key
        self.percentile, self.fg_threshold = float(intensity_percentile), float(foreground_threshold)
        self.fg_margin, self.min_slice_fg = int(foreground_margin), float(min_slice_foreground)
        self.crop_margin, self.random_flip, self.val_fraction = float(crop_margin), random_flip, val_fraction
        self.max_bad_fraction, self.builtin_size = max_bad_fraction, int(builtin_size)
        self.builtin_depth, self.cache_dir, self.cache_workers = builtin_depth, cache_dir, int(cache_workers)
        self.num_volumes: dict[str, int] = {}

    @property
    def data_shape(self) -> list[int]:
        return [self.channels, *self.shape]

    # ---- geometry ---------------------------------------------------------------------------------
    def _volume_shape(self, shape: Sequence[int]) -> list[int]:
        """A slice-mode 2D size placed on the in-plane axes; the slice axis gets ``depth`` (or -1)."""
        if self.mode == "volume":
            return list(shape)
        out = list(shape)
        out.insert(self.slice_axis, -1)
        return out

    def _phantom_shape(self) -> list[int]:
        if self.mode == "volume":
            return list(self.shape)
        out = list(self.shape)
        out.insert(self.slice_axis, int(self.builtin_depth or max(8, max(self.shape) // 2)))
        return out

    def _flip_axis(self) -> int | None:
        """Left-right (RAS axis 0), the one anatomically plausible mirror; None when it is the slice axis."""
        if not self.random_flip or (self.mode == "slice" and self.slice_axis == 0):
            return None
        return 0

    # ---- class labels (cond=class) -----------------------------------------------------------------
    def folder_classes(self) -> list[str]:
        """Classes from the first-level subfolders (or a CSV) of a folder path, or for a datalist .json from
        each entry's ``datamodule.labels_column`` key (or a CSV); remembered per volume for ``setup``."""
        if not self.path:
            raise self.no_builtin_labels()
        if getattr(self, "_label_of", None) is None:
            root = Path(self.path).expanduser()
            if root.is_file() and root.suffix.lower() == ".json" and self.label_source != "csv":
                self._classes, self._label_of = self._datalist_labels(root)
            else:
                items = discover(self.path, self.datalist_key, self.datalist_val_key)
                items = items[0] + (items[1] or [])
                folder = root.parent if root.is_file() else root
                paths = [Path(it[KEY]) for it in items]
                classes, labels = self.file_labels(folder, paths)
                self._classes, self._label_of = classes, {it[KEY]: lab for it, lab in zip(items, labels)}
        return self._classes

    def _datalist_labels(self, root: Path) -> tuple[list[str], dict[str, int]]:
        try:
            content = json.loads(root.read_text())
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(f"Datalist {root} could not be read as JSON ({e}); fix the file.") from None
        names: dict[str, str] = {}
        for key in (self.datalist_key, self.datalist_val_key):
            if key not in content:
                continue
            entries = content[key]
            for i, (entry, it) in enumerate(zip(entries, load_datalist(root, key))):
                value = entry.get(self.labels_column)
                if value is None or isinstance(value, (list, dict)):
                    raise DataError(f"Datalist {root} entry {i} of '{key}' has no class under "
                                    f"'{self.labels_column}'; add one to every entry or set "
                                    "datamodule.labels_column to the key that holds the class.")
                if isinstance(value, str) and value.lower().endswith(tuple(NIFTI_SUFFIXES)):
                    raise DataError(f"Datalist {root} entry {i} of '{key}' holds a file ({value}) under "
                                    f"'{self.labels_column}', a segmentation rather than a class; set "
                                    "datamodule.labels_column to the key that holds the class.")
                names[it[KEY]] = str(value)
        classes = class_names(names.values())
        index = {c: i for i, c in enumerate(classes)}
        return classes, {k: index[v] for k, v in names.items()}

    # ---- captions (cond=text) ---------------------------------------------------------------------
    def _caption_of(self, items: list[dict]) -> dict[str, str]:
        """``{item path: caption}`` for the items that have one (sidecar, CSV or, for a datalist .json path, the
        ``datamodule.captions_column`` key of each entry); the others are counted and dropped."""
        root = Path(self.path).expanduser()
        source = self.caption_source
        if source == "datalist" or (self.caption_source_given == "auto" and root.is_file()
                                    and root.suffix.lower() == ".json"):
            source = "datalist"
            found = self._datalist_captions(root, items)
        else:
            folder = root.parent if root.is_file() else root
            found = file_captions([Path(it[KEY]) for it in items], folder, source, self.captions_csv,
                                  self.captions_column)
        keep, captions = keep_captioned([Path(it[KEY]).name for it in items], found, self.max_bad_fraction,
                                        sidecar_fix(source))
        return {items[i][KEY]: c for i, c in zip(keep, captions)}

    def _datalist_captions(self, root: Path, items: list[dict]) -> list[tuple[str | None, str]]:
        if not (root.is_file() and root.suffix.lower() == ".json"):
            raise CaptionError(f"datamodule.captions=datalist needs a datalist .json as datamodule.path, got {root}; "
                               "use sidecar or csv captions for a folder.")
        content = json.loads(root.read_text())
        text: dict[str, str] = {}
        for key in (self.datalist_key, self.datalist_val_key):
            if key in content:
                for entry, it in zip(content[key], load_datalist(root, key)):
                    text[it[KEY]] = clean(entry.get(self.captions_column) if isinstance(entry, dict) else None)
        why = f"no '{self.captions_column}' in its datalist entry"
        return [(text.get(it[KEY]) or None, why) for it in items]

    # ---- setup ------------------------------------------------------------------------------------
    def _items(self, counter: BadInputCounter) -> tuple[list[dict], list[dict] | None, int]:
        if not self.path:
            seed0 = self.seed * 1_000_003
            phantoms = [
                {"reader": "phantom", "seed": seed0 + i, KEY: f"phantom {i}"}
                for i in range(self.builtin_size)
            ]
            return phantoms, None, len(phantoms)
        train, val = discover(self.path, self.datalist_key, self.datalist_val_key)
        total = len(train) + len(val or [])
        native = [a for a in range(3) if self.spacing is None or self.spacing[a] is None]
        train = check_headers(train, self.select_channel, counter, native)
        if val is not None:
            val = check_headers(val, self.select_channel, counter, native)
        if len(counter.bad) > counter.max_fraction * total:  # stop before decoding anything
            counter.check(total)
        if not train:
            raise DataError(
                f"No usable MRI volume under datamodule.path={self.path}; see the warnings above."
            )
        return train, val, total

    def _prepare(self) -> Prepare:
        """The deterministic chain per volume, shared by the cache and the shard decoder."""
        chain = prepare_chain(
            channels=self.channels,
            spacing=self.spacing,
            percentile=self.percentile,
            foreground_threshold=self.fg_threshold,
            foreground_margin=self.fg_margin,
            padded_size=self._volume_shape(load_size(self.shape, self.crop_margin)),
            select_channel=self.select_channel,
            phantom_shape=self._phantom_shape(),
            phantom_spacing=[s or 1.0 for s in (self.spacing or [1.0] * 3)],
        )
        return Prepare(chain, self.fg_threshold, self.channels == 2)

    def shard_decoder(self, train: bool) -> MRIShardDecoder:
        augment = augment_chain(self.shape, train, self._flip_axis() if train else None)
        return MRIShardDecoder(self._prepare(), augment, self.mode, self.slice_axis, self.fg_threshold,
                               self.min_slice_fg, self.channels == 2, train)

    def _cache(self, items: list[dict]) -> Dataset:
        settings = dict(
            mode=self.mode,
            shape=self.shape,
            spacing=self.spacing,
            channels=self.channels,
            slice_axis=self.slice_axis,
            select_channel=self.select_channel,
            p=self.percentile,
            fg=self.fg_threshold,
            margin=self.fg_margin,
            crop=self.crop_margin,
        )
        transform = Compose([self._prepare()])
        if self.cache_dir:
            # the settings are part of each item, hence of the cache key: changing them re-decodes
            items = [{**it, "settings": repr(settings)} for it in items]
            return PersistentDataset(items, transform=transform, cache_dir=self.cache_dir)
        return CacheDataset(
            items,
            transform=transform,
            cache_rate=1.0,
            num_workers=max(1, self.cache_workers),
            progress=False,
            copy_cache=False,
        )

    def _index(self, volumes: Dataset, ids: Sequence[int]) -> list[tuple[int, int | None]]:
        if self.mode == "volume":
            return [(i, None) for i in ids]
        out = []
        for i in ids:
            frac = slice_foreground(volumes[i][KEY], self.slice_axis, self.fg_threshold, self.channels == 2)
            out += [(i, int(s)) for s in torch.nonzero(frac >= self.min_slice_fg).flatten().tolist()]
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.is_streaming:
            return
        if self.label_source != "none" and not self.path:
            raise self.no_builtin_labels()
        if self.has_captions and not self.path:
            raise self.no_builtin_captions()
        counter = BadInputCounter("volume", self.max_bad_fraction)
        train_items, val_items, total = self._items(counter)
        caption_of = None
        if self.has_captions:  # volumes without a caption are dropped (counted) before they are cached
            caption_of = self._caption_of(train_items + (val_items or []))
            train_items = [it for it in train_items if it[KEY] in caption_of]
            val_items = None if val_items is None else [it for it in val_items if it[KEY] in caption_of]
        if val_items is None:
            train_ids, val_ids = split_indices(len(train_items), self.val_fraction, self.seed)
            items = train_items
        else:
            items = train_items + val_items
            train_ids, val_ids = list(range(len(train_items))), list(range(len(train_items), len(items)))
        threads = torch.get_num_threads()
        # preprocessing is many small ops per volume: parallel over volumes (cache_workers), one thread each
        torch.set_num_threads(1)
        try:
            volumes = self._cache(items)
            good = set()
            for i, it in enumerate(items):  # decodes (or loads from the disk cache) every volume once, here
                out = volumes[i]
                if "error" in out:
                    counter.add(it[KEY], out["error"])
                else:
                    good.add(i)
        finally:
            torch.set_num_threads(threads)
        counter.check(total)
        train_ids = [i for i in train_ids if i in good]
        val_ids = [i for i in val_ids if i in good]
        if not train_ids:
            raise DataError("No usable MRI volume left for training; see the warnings above.")
        train_index, val_index = self._index(volumes, train_ids), self._index(volumes, val_ids)
        if not train_index:
            raise DataError(
                f"No slice along datamodule.slice_axis={self.slice_axis} has more than "
                f"datamodule.min_slice_foreground={self.min_slice_fg} foreground; lower it."
            )
        axis = self.slice_axis
        labels = None
        if self.label_source != "none":
            self.folder_classes()
            labels = [self._label_of[it[KEY]] for it in items]
        captions = None if caption_of is None else [caption_of[it[KEY]] for it in items]
        self.train_set = CachedItems(
            volumes, train_index, axis, augment_chain(self.shape, True, self._flip_axis()), labels, captions
        )
        self.val_set = CachedItems(volumes, val_index, axis, augment_chain(self.shape, False, None), labels,
                                   captions)
        self.num_volumes = {"train": len(train_ids), "val": len(val_ids)}
        what = "volumes" if self.mode == "volume" else f"slices (axis {axis})"
        log.info(
            "MRI data: %d train and %d validation %s from %d + %d volumes, shape %s.",
            len(train_index),
            len(val_index),
            what,
            len(train_ids),
            len(val_ids),
            self.data_shape,
        )
