"""Training and validation loaders over webdataset shards, shared by every domain.

Each rank reads ``W = max(num_workers, 1)`` endless logical streams; global batch ``b`` of a rank is batch
``b // W`` of stream ``b % W`` (the DataLoader round-robins over workers, and every worker yields whole
batches). Stream ``l`` is a sequence of chunks; chunk ``c`` is ``chunk_shards`` shards chosen by a pure
function of ``(seed, rank, l, c)``: drawn with replacement from all shards (``resample``, the default), or
taken in turn from the stream's own share after splitting shards by rank and then by worker. A chunk's
samples pass through a shuffle buffer seeded the same way and fill exactly as many slots as the shard index
(``summary.json``, or a count of the tar) says the chunk holds; batch ``j`` is slots ``[j*B, (j+1)*B)``. So:

- the position of every stream follows from ``trainer.global_step``: a resumed run re-reads at most one chunk
  per worker (without decoding) and then yields the very batches, flips and crops the uninterrupted run would
  have (exact while the number of ranks, workers, the batch size and the shards are unchanged; the datamodule
  state in the checkpoint records them and a changed setup is reported);
- every rank yields batches for ever, so no rank runs dry on uneven shards: ``max_steps`` ends them together;
- an undecodable sample or a corrupt member is skipped and counted (an error past
  ``datamodule.max_bad_fraction``); its slot is filled with another item of the same batch, which keeps the
  batch size and the position fixed.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import asdict, dataclass, fields

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from src.errors import DataError

from .items import BadInputCounter, call_seeded
from .shard_sources import resolve_shards, shard_counts, shard_name

log = logging.getLogger(__name__)

MIN_CHECK = 100  # samples seen before the share of bad ones is judged (a share of 1 in 3 means little)
MAX_PENDING = 64  # batches with no readable sample that may wait for a later batch to lend them items


@dataclass(frozen=True)
class ShardSettings:
    """``datamodule.shards.*``."""

    resample: bool = True        # draw shards with replacement per rank and worker; false: split them
    chunk_shards: int = 4        # shards per chunk: the buffer drains at chunk ends; a resume re-reads one
    shuffle_buffer: int = 1000   # samples in the shuffle buffer (0 or 1: no shuffling)
    val_path: str | None = None  # validation shards for a pattern path (a shard folder uses its val-*.tar)

    @classmethod
    def from_config(cls, cfg: dict | None) -> ShardSettings:
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise DataError(f"Unknown datamodule.shards.{unknown[0]}; valid: {', '.join(sorted(names))}.")
        s = cls(**cfg)
        if s.chunk_shards < 1:
            raise DataError("datamodule.shards.chunk_shards must be at least 1.")
        return s


@dataclass(frozen=True)
class StreamConfig:
    """Everything a worker needs to produce its stream (picklable, no reference to the trainer)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    streams: int = 1
    resample: bool = True
    chunk_shards: int = 4
    shuffle_buffer: int = 1000
    max_bad_fraction: float = 0.01

    def signature(self) -> dict:
        """What must be unchanged for a resumed run to see exactly the uninterrupted run's samples."""
        d = {k: v for k, v in asdict(self).items() if k not in ("urls", "counts", "rank", "max_bad_fraction")}
        names = [shard_name(u) for u in self.urls]
        d["shards"] = hashlib.sha1(repr((names, self.counts)).encode()).hexdigest()[:16]
        return d


def mix(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def shard_samples(url: str, declared: int, bad: BadInputCounter):
    """Exactly ``declared`` raw samples of one shard: ``None`` stands for each one that could not be read."""
    try:
        stream = wds.gopen(url)
    except Exception as e:  # noqa: BLE001 - whatever the scheme, a shard that does not open is missing
        raise DataError(f"Could not open shard {url} ({type(e).__name__}: {e}); "
                        "check datamodule.path.") from None
    n = 0

    def handler(exn: Exception) -> bool:
        reason = f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        if n == 0:
            raise DataError(f"Could not read shard {url} ({reason}); check that it exists and is a tar file.")
        bad.add(f"shard {url}", f"unreadable after {n} samples ({reason})")
        return True

    try:
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}], handler=handler),
                                    handler=handler):
            if n >= declared:
                log.warning("Shard %s holds more samples than its index says (%d); the rest are not used.",
                            url, declared)
                break
            n += 1
            yield sample
    finally:
        try:
            stream.close()
        except OSError as e:  # a pipe: URL reports its exit status here; what it failed to deliver is counted
            log.debug("Closing shard %s: %s", url, e)
    for _ in range(declared - n):
        bad.add(f"shard {url}", f"{n} of the {declared} samples its index lists could be read")
        yield None


def collate(pairs: list[tuple[str | None, dict | None]], good=None) -> dict:
    """Stack items into a batch; an unreadable slot takes a readable item of the batch (or of ``good``)."""
    good = good or [p for p in pairs if p[1] is not None]
    filled = [p if p[1] is not None else good[i % len(good)] for i, p in enumerate(pairs)]
    batch = default_collate([item for _, item in filled])
    batch["__key__"] = [key for key, _ in filled]
    return batch


def decode_one(decode, raw: dict, seed: int, bad: BadInputCounter) -> dict | None:
    try:
        return call_seeded(seed, decode, raw)
    except DataError:  # not a bad sample but data that cannot work as configured (e.g. a missing label)
        raise
    except Exception as e:  # noqa: BLE001 - any failure to decode one sample means the same: skip and count it
        bad.add(f"{raw.get('__key__')} in {raw.get('__url__')}", f"{type(e).__name__}: {e}")
        return None


class TrainShardStream(IterableDataset):
    """Endless batches for one rank; ``first_batch`` is how many batches this rank consumed before."""

    def __init__(self, cfg: StreamConfig, decode, first_batch: int = 0):
        self.cfg, self.decode, self.first_batch = cfg, decode, first_batch
        self._orders: dict[tuple[int, int], list[int]] = {}  # shard order per (stream, pass over own shards)

    # ---- which shards each chunk reads: pure functions of (seed, rank, stream, chunk) --------------------
    def own_shards(self, l: int) -> list[int]:
        c = self.cfg
        # split by node, then by worker, by hand: webdataset's split_by_node reads the rank from the
        # environment, while here it comes from the trainer (and must match the stream's own seeds)
        return list(range(len(c.urls)))[c.rank::c.world_size][l::c.streams]

    def chunk_shards(self, l: int, chunk: int) -> list[int]:
        c, m = self.cfg, self.cfg.chunk_shards
        if c.resample:
            rng = random.Random(mix("shards", c.seed, c.rank, l, chunk))
            return [rng.randrange(len(c.urls)) for _ in range(m)]
        own = self.own_shards(l)
        out = []
        for q in range(chunk * m, (chunk + 1) * m):
            epoch, i = divmod(q, len(own))
            if (l, epoch) not in self._orders:
                if len(self._orders) > 8:
                    self._orders.clear()
                rng = random.Random(mix("epoch", c.seed, c.rank, l, epoch))
                self._orders[l, epoch] = rng.sample(own, len(own))
            out.append(self._orders[l, epoch][i])
        return out

    def chunk_len(self, l: int, chunk: int) -> int:
        return sum(self.cfg.counts[i] for i in self.chunk_shards(l, chunk))

    def locate(self, l: int, slot: int) -> tuple[int, int]:
        """(chunk, offset in chunk) of the ``slot``-th sample slot of stream ``l``."""
        chunk = 0
        while slot >= (n := self.chunk_len(l, chunk)):
            slot, chunk = slot - n, chunk + 1
        return chunk, slot

    def chunk_samples(self, l: int, chunk: int, bad: BadInputCounter):
        c = self.cfg
        raw = (s for i in self.chunk_shards(l, chunk) for s in shard_samples(c.urls[i], c.counts[i], bad))
        if c.shuffle_buffer <= 1:
            return raw
        rng = random.Random(mix("buffer", c.seed, c.rank, l, chunk))
        return wds.shuffle(c.shuffle_buffer, min(100, c.shuffle_buffer), rng=rng)(raw)

    # ---- batches -------------------------------------------------------------------------------------
    def batches(self, l: int, first: int):
        c = self.cfg
        chunk, skip = self.locate(l, first * c.batch_size)
        bad = BadInputCounter("shard sample", c.max_bad_fraction)
        seen, pairs = 0, []
        pending: list[list] = []  # whole batches of unreadable slots, filled from the next readable batch
        while True:
            for i, raw in enumerate(self.chunk_samples(l, chunk, bad)):
                if i < skip:  # resuming: read past what the interrupted run used, without decoding it
                    continue
                seen += 1
                key = item = None
                if raw is not None:
                    seed = mix(c.seed, c.rank, l, chunk, i)
                    key, item = raw["__key__"], decode_one(self.decode, raw, seed, bad)
                pairs.append((key, item))
                if bad.count and (seen >= MIN_CHECK or c.max_bad_fraction <= 0):
                    bad.check(seen)
                if len(pairs) == c.batch_size:
                    good = [p for p in pairs if p[1] is not None]
                    if not good:  # looking ahead, never back, keeps a resumed stream identical
                        pending.append(pairs)
                        if len(pending) > MAX_PENDING:
                            examples = "; ".join(f"{name} ({why})" for name, why in bad.bad[:3])
                            n = len(pending) * c.batch_size
                            raise DataError(f"None of {n} consecutive samples could be read, "
                                            f"e.g. {examples}; fix the shards.")
                    else:
                        for p in pending:
                            yield collate(p, good)
                        pending = []
                        yield collate(pairs)
                    pairs = []
            chunk, skip = chunk + 1, 0

    def __iter__(self):
        w, num = worker_slot()
        if num != self.cfg.streams:
            raise RuntimeError(f"TrainShardStream built for {self.cfg.streams} workers runs in {num}.")
        b = self.first_batch + w  # the first global batch this worker yields (round-robin from worker 0)
        try:
            yield from self.batches(b % num, b // num)
        except DataError as e:  # surfaced by StreamLoader in the main process as one sentence
            yield {"__error__": str(e)}


class ValShardStream(IterableDataset):
    """The same validation items at every evaluation; every rank yields the same number of batches."""

    def __init__(self, urls: list[str], counts: list[int], batch_size: int, rank: int, world_size: int,
                 decode, seed: int = 0, max_bad_fraction: float = 0.01):
        self.urls, self.counts, self.batch_size = list(urls), list(counts), batch_size
        self.rank, self.world_size, self.decode, self.seed = rank, world_size, decode, seed
        self.max_bad_fraction = max_bad_fraction

    def per_rank(self) -> int:
        return -(-sum(self.counts) // self.world_size)  # padded by cycling, as DistributedSampler pads

    def batches(self, w: int, num: int):
        quota = len(range(w, self.per_rank(), num))
        bad = BadInputCounter("validation sample", self.max_bad_fraction)
        g = done = seen = idle_passes = 0
        pairs = []
        while done < quota:
            before = done
            for url, n in zip(self.urls, self.counts):
                for raw in shard_samples(url, n, bad):
                    mine = g % self.world_size == self.rank and (g // self.world_size) % num == w
                    g += 1
                    if not mine or raw is None:
                        continue
                    seen += 1
                    item = decode_one(self.decode, raw, mix("val", self.seed, g), bad)
                    if bad.count and (seen >= MIN_CHECK or self.max_bad_fraction <= 0):
                        bad.check(seen)
                    if item is None:
                        continue
                    pairs.append((raw["__key__"], item))
                    done += 1
                    if len(pairs) == self.batch_size or done == quota:
                        yield collate(pairs)
                        pairs = []
                    if done == quota:
                        return
            idle_passes = idle_passes + 1 if done == before else 0
            if idle_passes > self.world_size * num:  # every slot has met every sample by now
                raise DataError(f"No validation sample in {len(self.urls)} shards could be read, e.g. "
                                f"{bad.bad[:1]}; fix the validation shards.")

    def __iter__(self):
        w, num = worker_slot()
        try:
            yield from self.batches(w, num)
        except DataError as e:
            yield {"__error__": str(e)}


class StreamLoader(DataLoader):
    """A DataLoader over whole batches that turns a worker's data error into a ``DataError`` here."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, dict) and "__error__" in batch:
                raise DataError(batch["__error__"])
            yield batch


class ShardSource:
    """The shards of one datamodule: finds and counts them once, builds loaders for the current rank."""

    def __init__(self, dm):
        self.dm, self.settings = dm, dm.shard_settings
        self.train_urls, self.val_urls = resolve_shards(dm.path, self.settings.val_path)
        self.train_counts = shard_counts(self.train_urls)
        self.val_counts = shard_counts(self.val_urls)
        if sum(self.train_counts) == 0:
            raise DataError(f"The {len(self.train_urls)} training shards of datamodule.path={dm.path} hold "
                            "no samples; pack the data with `python -m datamodules.shards`.")
        self.signature: dict | None = None
        self.restored: dict | None = None
        log.info("Streaming from %d training shards (%d samples) and %d validation shards (%d samples).",
                 len(self.train_urls), sum(self.train_counts), len(self.val_urls), sum(self.val_counts))

    def config(self) -> StreamConfig:
        dm, s = self.dm, self.settings
        rank, world = dm._rank_world()
        streams = max(dm.num_workers, 1)
        cfg = StreamConfig(tuple(self.train_urls), tuple(self.train_counts), dm.batch_size, dm.seed, rank,
                           world, streams, s.resample, s.chunk_shards, s.shuffle_buffer,
                           float(getattr(dm, "max_bad_fraction", 0.01)))
        if not s.resample:
            n = len(self.train_urls)
            if n < world * streams:
                raise DataError(
                    f"datamodule.shards.resample=false gives each of {world} ranks x {streams} workers its "
                    f"own shards, but datamodule.path has only {n}; write more, smaller shards "
                    "(--max-count), use fewer workers, or set datamodule.shards.resample=true.")
            empty = [l for l in range(streams) if not sum(cfg.counts[i] for i in TrainShardStream(cfg, None)
                                                              .own_shards(l))]
            if empty:
                raise DataError(f"Rank {rank}, worker {empty[0]} got only empty shards; "
                                "set datamodule.shards.resample=true or repack the data.")
        return cfg

    def train_loader(self) -> StreamLoader:
        cfg = self.config()
        t = getattr(self.dm, "trainer", None)
        first = (t.global_step * t.accumulate_grad_batches) if t is not None else 0
        self.signature = cfg.signature()
        if self.restored is not None and self.restored != self.signature:
            changed = ", ".join(f"{k} {self.restored.get(k)} -> {v}" for k, v in self.signature.items()
                                if self.restored.get(k) != v)
            log.warning("Resuming with a different data stream (%s): training continues deterministically "
                        "but does not see exactly the samples the uninterrupted run would have.", changed)
        return StreamLoader(TrainShardStream(cfg, self.dm.item_decoder(True), first), batch_size=None,
                            **self.dm._loader_kwargs())

    def val_loader(self):
        if not self.val_urls:
            log.info("No validation shards (val-*.tar beside the training shards, or "
                     "datamodule.shards.val_path): validation is skipped.")
            return []
        dm = self.dm
        rank, world = dm._rank_world()
        ds = ValShardStream(self.val_urls, self.val_counts, dm.val_batch_size, rank, world,
                            dm.item_decoder(False), dm.seed, float(getattr(dm, "max_bad_fraction", 0.01)))
        kwargs = dm._loader_kwargs()
        kwargs["num_workers"] = min(kwargs["num_workers"], ds.per_rank())
        kwargs["persistent_workers"] = kwargs["persistent_workers"] and kwargs["num_workers"] > 0
        return StreamLoader(ds, batch_size=None, **kwargs)

    def state_dict(self) -> dict:
        return {"stream": self.signature} if self.signature else {}

    def load_state_dict(self, state: dict) -> None:
        self.restored = state.get("stream")
