"""The pieces under every loader: the resumable per-rank sampler, items seeded per draw, bad-input
accounting, the train/validation split, and file-backed datasets that skip unreadable files."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from src.errors import DataError

log = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Endless per-rank stream of keys ``epoch * size + index`` that can start at any position.

    The key carries the epoch so random augmentations can be seeded per draw (see ``ReproducibleItems``).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0):
        if size <= 0:
            raise DataError("The training set is empty.")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.shuffle, self.start = shuffle, start
        self.per_rank = math.ceil(size / world_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.size, generator=g)
        else:
            perm = torch.arange(self.size)
        total = self.per_rank * self.world_size
        if total > self.size:  # pad by wrapping, as DistributedSampler does
            perm = torch.cat([perm, perm.repeat(math.ceil(total / self.size))[: total - self.size]])
        return perm[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        pos = self.start
        while True:
            epoch, offset = divmod(pos, self.per_rank)
            yield from (self.epoch_indices(epoch)[offset:] + epoch * self.size).tolist()
            pos = (epoch + 1) * self.per_rank


class ReproducibleItems(Dataset):
    """Maps a sampler key to ``dataset[key % len]`` with torch and numpy RNGs seeded from the key.

    Random augmentations (flips, crops) then depend only on the draw, not on worker state, so a
    resumed run augments exactly as the uninterrupted run did.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        seed = (self.seed * 1_000_003 + int(key)) % (2**32)
        return call_seeded(seed, self.dataset.__getitem__, int(key) % len(self.dataset))


def call_seeded(seed: int, fn, *args):
    """``fn(*args)`` with torch and numpy global RNGs seeded by ``seed``; the caller's RNGs stay untouched."""
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % (2**32))
            return fn(*args)
    finally:
        np.random.set_state(np_state)


class BadInputCounter:
    """Counts skipped inputs and raises once their share passes ``max_fraction``."""

    MAX_EXAMPLES = 20  # an endless stream meets the same bad sample again and again: keep a few, count all

    def __init__(self, what: str, max_fraction: float, key: str = "datamodule.max_bad_fraction"):
        self.what, self.max_fraction, self.key = what, max_fraction, key
        self.bad: list[tuple[str, str]] = []
        self.count = 0
        self._logged: set[str] = set()

    def add(self, name: str, reason: str) -> None:
        self.count += 1
        if len(self.bad) < self.MAX_EXAMPLES:
            self.bad.append((name, reason))
        if name not in self._logged and len(self._logged) < 1000:
            self._logged.add(name)
            log.warning("Skipping %s %s: %s", self.what, name, reason)

    def check(self, total: int) -> None:
        n = self.count
        if total == 0:
            return
        if n / total > self.max_fraction:
            examples = "; ".join(f"{name} ({why})" for name, why in self.bad[:3])
            raise DataError(
                f"{n} of {total} {self.what}s could not be read (more than {self.key}={self.max_fraction}), "
                f"e.g. {examples}; fix or remove them, or raise {self.key}.")
        if n:
            log.warning("Skipped %d of %d %ss that could not be read.", n, total, self.what)


def probe_folder(root: Path, what: str, kind: str, list_files, probe, errors: tuple[type[BaseException], ...],
                 max_bad_fraction: float, builtin: str) -> tuple[list, BadInputCounter]:
    """Check ``datamodule.path``, list its files and ``probe`` each; unreadable ones are counted and skipped.

    ``what`` names one file ("image"), ``kind`` the files a folder should hold ("png/jpg images") and
    ``builtin`` what an unset path trains on.
    Returns the probe results of the readable files and the counter (already checked against the limit).
    """
    if not root.exists():
        raise DataError(f"datamodule.path={root} does not exist; pass a folder of {kind} "
                        f"or leave datamodule.path unset to train on the {builtin}.")
    if not root.is_dir():
        raise DataError(f"datamodule.path={root} is not a folder; pass a folder of {kind}.")
    files = list_files(root)
    if not files:
        raise DataError(f"No {what}s found under {root} (looked for {kind}); check datamodule.path.")
    counter = BadInputCounter(what, max_bad_fraction)
    good = []
    for f in files:
        try:
            good.append(probe(f))
        except errors as e:
            counter.add(str(f), str(e) or type(e).__name__)
    counter.check(len(files))
    return good, counter


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split; at least one validation item when there are two or more."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    n_val = min(max(1 if n > 1 else 0, round(n * val_fraction)), max(n - 1, 0))
    return perm[n_val:], perm[:n_val]


class Subset(Dataset):
    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


class FileItems(Dataset):
    """Items read from files, ``{"x": load(i)}`` (and ``"label": labels[i]`` when the files have class labels):
    an unreadable file is skipped for the next one (warned once), and a DataError names a few files when none
    can be read. ``what`` names one file in messages."""

    what = "file"
    unreadable: tuple[type[BaseException], ...] = (OSError, ValueError)

    def __init__(self, files: list, labels: Sequence[int] | None = None, captions: Sequence[str] | None = None):
        self.files = files
        self.labels = None if labels is None else list(labels)
        self.captions = None if captions is None else list(captions)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int):
        return self.files[i]

    def load(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        failures = []
        for k in range(len(self.files)):
            j = (i + k) % len(self.files)
            try:
                item = {"x": self.load(j)}
                if self.labels is not None:
                    item["label"] = self.labels[j]
                if self.captions is not None:
                    item["caption"] = self.captions[j]
                return item
            except self.unreadable as e:
                failures.append(f"{self.path(j)} ({e or type(e).__name__})")
                if j not in self._warned:
                    self._warned.add(j)
                    log.warning("Skipping unreadable %s %s: %s", self.what, self.path(j), e)
        raise DataError(f"None of the {len(self.files)} {self.what}s in the dataset could be decoded, e.g. "
                        f"{'; '.join(failures[:3])}; fix or remove them.")
