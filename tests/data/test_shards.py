"""Webdataset shards: the writer, and the reader's order, resume, rank split and bad-input handling."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from datamodules.shards import is_shard_path, main, resolve_shards, shard_counts, write_shards
from datamodules.stream import ShardSource, StreamConfig, StreamLoader, TrainShardStream, ValShardStream
from src.domains import build_datamodule
from src.domains.image.data import ImageFolder, decode_sample
from src.errors import DataError

RES = 8


def make_images(root: Path, n: int = 30, broken: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"class{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (9 + i % 4, 11, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"img.{i:03d}.png")  # a dot in the stem: keys must not split on it
    if broken:
        (root / "broken.png").write_bytes(b"this is not an image")
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    src = make_images(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards("image", src, out, max_count=7, val_fraction=0.1, seed=0, overwrite=True)
    return src, out, summary


def image_dm(path, **kw):
    cfg = {"name": "image", "path": str(path), "resolution": RES, "batch_size": 3, "num_workers": 0,
           "random_flip": False, "max_bad_fraction": 0.5, **kw}
    return build_datamodule(cfg, seed=0)


def decoder(flip=False):
    return image_dm(".", random_flip=flip).shard_decoder(True)


def stream_cfg(out, **kw) -> StreamConfig:
    urls, _ = resolve_shards(str(out))
    base = dict(batch_size=3, chunk_shards=2, shuffle_buffer=8, max_bad_fraction=0.5)
    return StreamConfig(tuple(urls), tuple(shard_counts(urls)), **{**base, **kw})


def take(ds, n: int, workers: int = 0) -> list[dict]:
    it = iter(StreamLoader(ds, batch_size=None, num_workers=workers))
    return [next(it) for _ in range(n)]


def keys(batches) -> list[list[str]]:
    return [b["__key__"] for b in batches]


# ---- writer --------------------------------------------------------------------------------------------
def test_writer_packs_split_and_skips_like_the_folder_path(packed):
    src, out, summary = packed
    assert summary["skipped"] and summary["skipped"][0]["path"] == "broken.png"
    assert summary["samples"]["train"] + summary["samples"]["val"] == 30
    counts = {name: s["samples"] for name, s in summary["shards"].items()}
    assert all(c <= 7 for c in counts.values())
    train_urls, val_urls = resolve_shards(str(out))
    assert shard_counts(train_urls) == [counts[Path(u).name] for u in train_urls]
    # the training split is the folder path's, in the same order
    import webdataset as wds

    paths = [json.loads(s["json"])["path"] for s in wds.WebDataset(train_urls, shardshuffle=False)]
    dm = image_dm(src, val_fraction=0.1)
    dm.setup("fit")
    assert paths == [f.relative_to(src).as_posix() for f in dm.train_set.files]
    val_paths = [json.loads(s["json"])["path"] for s in wds.WebDataset(val_urls, shardshuffle=False)]
    assert val_paths == [f.relative_to(src).as_posix() for f in dm.val_set.files]


def test_writer_is_deterministic_and_size_limited(tmp_path):
    src = make_images(tmp_path / "src", n=12, broken=False)
    a = write_shards("image", src, tmp_path / "a", max_count=100, max_size="30KB", val_fraction=0.0)
    write_shards("image", src, tmp_path / "b", max_count=100, max_size="30KB", val_fraction=0.0)
    names = sorted(a["shards"])
    assert len(names) > 2  # the size limit, not the count, split them
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).stat().st_size <= 30_000


def test_writer_refuses_to_overwrite_unless_told(tmp_path, capsys):
    src = make_images(tmp_path / "src", n=10, broken=False)
    out = tmp_path / "out"
    assert main(["--domain", "image", "--src", str(src), "--out", str(out), "--max-count", "2"]) == 0
    assert "datamodule.path=" in capsys.readouterr().out
    assert main(["--domain", "image", "--src", str(src), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--domain", "image", "--src", str(src), "--out", str(out), "--overwrite"]) == 0
    # the stale shards of the first run are gone
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "val-000000.tar"]


def test_writer_names_the_domains_with_shard_support(tmp_path):
    with pytest.raises(DataError, match=r"Unknown --domain 'newdomain'; choose one of image, audio, mri\."):
        write_shards("newdomain", tmp_path, tmp_path / "out")


# ---- detection and decoding ------------------------------------------------------------------------------
def test_detects_shard_paths(packed, tmp_path):
    src, out, _ = packed
    assert is_shard_path(str(out)) and is_shard_path(f"{out}/shard-{{000000..000003}}.tar")
    assert is_shard_path("https://host/data/shard-000000.tar") and is_shard_path("pipe:curl -s URL")
    assert is_shard_path("s3://bucket/shards/")
    assert not is_shard_path(str(src)) and not is_shard_path(None) and not is_shard_path(str(tmp_path / "x"))


def test_shard_items_equal_folder_items(packed):
    src, out, _ = packed
    from webdataset.tariterators import tarfile_samples

    urls, _ = resolve_shards(str(out))
    n = 0
    for s in tarfile_samples([{"url": u} for u in urls]):
        path = src / json.loads(s["json"])["path"]
        folder = ImageFolder([path], RES, 3, random_flip=False)[0]["x"]
        assert torch.equal(decode_sample(s, RES, 3, random_flip=False)["x"], folder)
        n += 1
    assert n == 27


# ---- the training stream -------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,resample", [(0, True), (2, True), (2, False)])
def test_resumed_stream_yields_the_same_batches(packed, workers, resample):
    _, out, _ = packed
    cfg = stream_cfg(out, streams=max(workers, 1), resample=resample)
    full = take(TrainShardStream(cfg, decoder(flip=True)), 14, workers)
    resumed = take(TrainShardStream(cfg, decoder(flip=True), first_batch=5), 9, workers)
    assert keys(resumed) == keys(full[5:])
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(resumed, full[5:]))  # flips included
    assert keys(full[:9]) != keys(resumed)
    assert all(b["x"].shape == (3, 3, RES, RES) for b in full)


def test_stream_items_are_folder_items_up_to_a_flip(packed):
    src, out, _ = packed
    batches = take(TrainShardStream(stream_cfg(out), decoder(flip=True)), 12)
    by_key = {f"{p.parent.name}/{p.stem.replace('.', '_')}": p for p in src.rglob("*.png")}
    flipped = 0
    for b in batches:
        for key, x in zip(b["__key__"], b["x"]):
            ref = ImageFolder([by_key[key]], RES, 3, random_flip=False)[0]["x"]
            assert torch.equal(x, ref) or torch.equal(x, ref.flip(-1))
            flipped += not torch.equal(x, ref)
    assert 0 < flipped < 36


def test_ranks_split_uneven_shards_and_never_run_dry(tmp_path):
    src = make_images(tmp_path / "src", n=16, broken=False)
    write_shards("image", src, tmp_path / "out", max_count=5, val_fraction=0.0)  # 15 train samples: 3 shards
    urls, _ = resolve_shards(str(tmp_path / "out"))
    assert len(urls) == 3
    seen = []
    for rank in (0, 1):
        cfg = stream_cfg(tmp_path / "out", rank=rank, world_size=2, resample=False, chunk_shards=1)
        batches = take(TrainShardStream(cfg, decoder()), 8)  # 24 samples: more than either rank's share
        seen.append({k for b in batches for k in b["__key__"]})
    assert len(seen[0]) == 10 and len(seen[1]) == 5 and not seen[0] & seen[1]

    dm = image_dm(tmp_path / "out", num_workers=2, shards={"resample": False})
    dm._rank_world = lambda: (0, 2)
    with pytest.raises(DataError, match="2 ranks x 2 workers"):
        ShardSource(dm).config()
    dm = image_dm(tmp_path / "out", num_workers=2)  # resampling: any number of shards will do
    dm._rank_world = lambda: (1, 2)
    assert ShardSource(dm).config().streams == 2


def test_validation_is_fixed_and_even_across_ranks(packed):
    _, out, summary = packed
    _, val_urls = resolve_shards(str(out))
    counts = shard_counts(val_urls)
    assert sum(counts) == summary["samples"]["val"] == 3
    per_rank = []
    for rank in (0, 1):
        ds = ValShardStream(val_urls, counts, 1, rank, 2, decoder())
        first = [k for b in StreamLoader(ds, batch_size=None, num_workers=2) for k in b["__key__"]]
        again = [k for b in StreamLoader(ds, batch_size=None) for k in b["__key__"]]
        assert len(first) == len(again) == 2 and sorted(first) == sorted(again)
        per_rank.append(first)
    from webdataset.tariterators import tarfile_samples

    val_keys = {s["__key__"] for s in tarfile_samples([{"url": u} for u in val_urls])}
    assert set(per_rank[0]) | set(per_rank[1]) == val_keys  # padded by cycling, like DistributedSampler


def test_changed_stream_setup_is_reported_on_resume(packed, caplog):
    _, out, _ = packed
    dm = image_dm(out, num_workers=2)
    dm.setup("fit")
    dm.train_dataloader()
    state = dm.state_dict()
    assert state["stream"]["streams"] == 2 and state["stream"]["world_size"] == 1
    other = image_dm(out, num_workers=1)
    other.load_state_dict(state)
    with caplog.at_level(logging.WARNING):
        other.train_dataloader()
    assert "streams 2 -> 1" in caplog.text


# ---- bad input -----------------------------------------------------------------------------------------
def test_undecodable_samples_are_skipped_and_counted(tmp_path, caplog):
    import webdataset as wds

    src = make_images(tmp_path / "src", n=9, broken=False)
    out = tmp_path / "out"
    write_shards("image", src, out, max_count=100, val_fraction=0.0)
    with wds.TarWriter(str(out / "shard-000001.tar"), encoder=False) as w:  # no index entry: it is counted
        w.write({"__key__": "corrupt/one", "png": b"\x89PNG garbage", "json": b"{}"})
        w.write({"__key__": "corrupt/two", "jpg": b"not a jpeg", "json": b"{}"})
    good = {f"{p.parent.name}/{p.stem.replace('.', '_')}" for p in src.rglob("*.png")}
    cfg = stream_cfg(out, chunk_shards=3)
    with caplog.at_level(logging.WARNING):
        batches = take(TrainShardStream(cfg, decoder()), 10)
    assert all(k in good for b in batches for k in b["__key__"]) and len(batches) == 10
    assert "corrupt/one" in caplog.text
    strict = StreamConfig(cfg.urls, cfg.counts, 3, chunk_shards=3, max_bad_fraction=0.0)
    with pytest.raises(DataError, match=r"1 of \d+ shard samples could not be read .*corrupt/"):
        take(TrainShardStream(strict, decoder()), 10, workers=1)


def test_truncated_shard_is_counted(tmp_path):
    src = make_images(tmp_path / "src", n=20, broken=False)
    out = tmp_path / "out"
    write_shards("image", src, out, max_count=10, val_fraction=0.0)
    shard = out / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])  # the index still says 10 samples
    cfg = stream_cfg(out, chunk_shards=2, max_bad_fraction=0.9)
    assert len(take(TrainShardStream(cfg, decoder()), 8)) == 8
    strict = StreamConfig(cfg.urls, cfg.counts, 3, chunk_shards=2, max_bad_fraction=0.0)
    with pytest.raises(DataError, match="shard-000000.tar"):
        take(TrainShardStream(strict, decoder()), 8)


def test_missing_shards_name_the_url(packed, tmp_path):
    _, out, _ = packed
    with pytest.raises(DataError, match=r"shard-000004.tar does not exist"):
        ShardSource(image_dm(f"{out}/shard-{{000000..000009}}.tar"))
    # a remote shard that is listed in summary.json but cannot be fetched: named by the reader
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "shard-000001.tar").unlink()
    dm = image_dm(f"pipe:cat {copy}/shard-000001.tar", num_workers=1)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"Could not read shard pipe:cat .*shard-000001.tar"):
        next(iter(dm.train_dataloader()))


def test_worker_errors_arrive_as_one_sentence():
    class Failing(torch.utils.data.IterableDataset):
        def __iter__(self):
            assert get_worker_info() is not None
            yield {"__error__": "Shard x.tar is broken; fix it."}

    with pytest.raises(DataError, match=r"^Shard x.tar is broken; fix it.$"):
        next(iter(StreamLoader(Failing(), batch_size=None, num_workers=1)))


def test_pipe_urls_find_their_summary_by_the_tar_they_read():
    from datamodules.shards import shard_name, summary_source
    url = "pipe:curl -s -L 'https://host/data/shard-000003.tar' --retry 3"
    assert shard_name(url) == "shard-000003.tar"
    assert summary_source(url) == "pipe:curl -s -L 'https://host/data/summary.json' --retry 3"
    s3 = "pipe:aws s3 cp s3://bucket/set/shard-000001.tar -"
    assert summary_source(s3) == "pipe:aws s3 cp s3://bucket/set/summary.json -"
    assert summary_source("pipe:./fetch.sh 7") is None  # a command that names no tar: no summary, no guess
    assert summary_source("/data/shards/shard-000001.tar") == "/data/shards/summary.json"
