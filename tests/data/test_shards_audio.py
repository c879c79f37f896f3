"""Audio from webdataset shards: the writer skips what the folder path skips, and a decoded shard sample is
the folder path's clip for that file (centred for validation, the same random crop for the same seed)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from webdataset.tariterators import tarfile_samples

from datamodules.base import call_seeded
from datamodules.shards import resolve_shards, write_shards
from src.domains import build_datamodule
from src.domains.audio.data import AudioFolder, ClipTransform, probe

ROOT = Path(__file__).resolve().parents[2]
RATE, CLIP = 16000, 0.25
LENGTH = round(RATE * CLIP)


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.4 * np.sin(2 * np.pi * freq * t) * np.linspace(0.2, 1.0, len(t))).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def make_audio(root: Path) -> Path:
    """12 readable files (wav, flac at another rate in stereo, ogg, one shorter than a clip) and 3 others."""
    for i in range(8):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(root / f"c{i % 2}" / f"tone.{i}.wav", tone(200 + 60 * i, 0.5, RATE), RATE)
    for i in range(2):
        sf.write(root / f"stereo{i}.flac", tone(330 + 110 * i, 0.5, 22050, channels=2), 22050)
    sf.write(root / "vorbis.ogg", tone(500, 0.5, RATE), RATE)
    sf.write(root / "short.wav", tone(700, 0.1, RATE), RATE)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")  # corrupt
    (root / "song.mp3").write_bytes(b"ID3 fake")  # a format the folder path refuses
    (root / "._tone.wav").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: ignored by both
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    src = make_audio(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards("audio", src, out, max_count=4, val_fraction=0.25, seed=0)
    return src, out, summary


def audio_dm(path, **kw):
    cfg = dict(name="audio", path=str(path), sample_rate=RATE, clip_seconds=CLIP, val_fraction=0.25,
               max_bad_fraction=0.5, batch_size=3, num_workers=0, **kw)
    return build_datamodule(cfg, seed=0)


def folder_clip(path: Path, random_crop: bool, channels: int = 1) -> torch.Tensor:
    folder = AudioFolder([probe(path)], RATE, LENGTH, channels, random_crop, ClipTransform(RATE, "peak", 0.95, -20))
    return folder[0]["x"]


def shard_samples(out: Path) -> list[dict]:
    train, val = resolve_shards(str(out))
    return list(tarfile_samples([{"url": u} for u in train + val]))


def test_writer_skips_and_splits_like_the_folder_path(data):
    src, out, summary = data
    assert sorted(s["path"] for s in summary["skipped"]) == ["broken.wav", "song.mp3"]
    assert "unsupported format .mp3" in str(summary["skipped"])
    assert summary["samples"] == {"train": 9, "val": 3}
    assert max(s["samples"] for s in summary["shards"].values()) <= 4
    dm = audio_dm(src)
    dm.setup("fit")
    train, val = resolve_shards(str(out))
    for urls, folder in ((train, dm.train_set), (val, dm.val_set)):
        paths = [json.loads(s["json"])["path"] for s in tarfile_samples([{"url": u} for u in urls])]
        assert paths == [f.path.relative_to(src).as_posix() for f in folder.files]
    meta = {json.loads(s["json"])["path"]: json.loads(s["json"]) for s in shard_samples(out)}
    assert meta["stereo0.flac"]["sample_rate"] == 22050 and meta["stereo0.flac"]["channels"] == 2
    assert (out / "shard-000000.tar").stat().st_size > 0 and not list(out.glob(".*partial"))


@pytest.mark.parametrize("channels", [1, 2])
def test_validation_items_equal_folder_items(data, channels):
    src, out, _ = data
    decode = audio_dm(out, channels=channels).shard_decoder(False)
    samples = shard_samples(out)
    assert {next(k for k in s if k in ("wav", "flac", "ogg")) for s in samples} == {"wav", "flac", "ogg"}
    for s in samples:
        x = decode(s)["x"]
        assert x.shape == (channels, LENGTH)
        assert torch.equal(x, folder_clip(src / json.loads(s["json"])["path"], False, channels))


def test_validation_loader_from_shards_equals_the_folder_loader(data):
    src, out, _ = data
    folder_dm, shard_dm = audio_dm(src), audio_dm(out)
    for dm in (folder_dm, shard_dm):
        dm.setup("fit")
    assert shard_dm.train_set is None and shard_dm.is_streaming  # streaming builds no folder datasets
    folder = torch.cat([b["x"] for b in folder_dm.val_dataloader()])
    shards = torch.cat([b["x"] for b in shard_dm.val_dataloader()])
    assert folder.shape == (3, 1, LENGTH) and torch.equal(shards, folder)


def test_training_crops_are_the_folder_crops_for_the_same_seed(data):
    src, out, _ = data
    decode = audio_dm(out).shard_decoder(True)
    sample = next(s for s in shard_samples(out) if json.loads(s["json"])["path"] == "c0/tone.0.wav")
    crops = [call_seeded(seed, decode, sample)["x"] for seed in range(4)]
    for seed, x in enumerate(crops):
        assert torch.equal(x, call_seeded(seed, folder_clip, src / "c0" / "tone.0.wav", True))
    assert len({tuple(x[0, :8].tolist()) for x in crops}) > 1  # random crops, not the centre each time
    assert not any(torch.equal(x, folder_clip(src / "c0" / "tone.0.wav", False)) for x in crops[1:])


def test_training_batches_from_shards(data):
    _, out, _ = data
    dm = audio_dm(out, normalize="peak", peak_level=0.9)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(4)]
    for b in batches:
        x = b["x"]
        assert x.shape == (3, 1, LENGTH) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert x.abs().amax(dim=(1, 2)).allclose(torch.tensor(0.9))  # every clip peak-normalised
    assert len({k for b in batches for k in b["__key__"]}) > 3


def test_mel_conditioning_from_shards_matches_the_folder(data):
    src, out, _ = data
    folder_dm, shard_dm = audio_dm(src, mel_conditioning=True), audio_dm(out, mel_conditioning=True)
    folder_dm.setup("fit")
    sample = next(s for s in shard_samples(out) if json.loads(s["json"])["path"] == folder_dm.val_set.base.files[0]
                  .path.relative_to(src).as_posix())
    item, ref = shard_dm.shard_decoder(False)(sample), folder_dm.val_set[0]
    assert item["cond"].shape == ref["cond"].shape == (80, LENGTH // 256 + 1)
    assert torch.equal(item["cond"], ref["cond"]) and torch.equal(item["x"], ref["x"])


def test_corrupt_sample_in_a_shard_is_a_value_error(data):
    _, out, _ = data
    decode = audio_dm(out).shard_decoder(False)
    with pytest.raises(ValueError, match="no audio member"):
        decode({"__key__": "x", "json": b"{}"})
    with pytest.raises(RuntimeError):  # soundfile's LibsndfileError: the stream skips and counts it
        decode({"__key__": "x", "wav": b"RIFF garbage"})


@pytest.mark.slow
@pytest.mark.parametrize("source", ["shards", "folder"])
def test_smoke_training_from_shards_and_folder(data, tmp_path, source):
    from src.train import train

    src, out, _ = data
    path = out if source == "shards" else src
    overrides = ["domain=audio", "experiment=smoke", f"datamodule.path={path}", "logger=none",
                 f"paths.output_dir={tmp_path}", "trainer.max_steps=6", "trainer.val_check_interval=3",
                 "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "sampling.num=1",
                 "sampling.steps=2", f"datamodule.clip_seconds={CLIP}", "datamodule.batch_size=4",
                 "datamodule.val_fraction=0.25", "datamodule.max_bad_fraction=0.5"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        result = train(compose("train", overrides=overrides))
    assert result["global_step"] == 6 and (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert np.isfinite(result["metrics"]["train/loss"]) and np.isfinite(result["metrics"]["val/loss"])
    wavs = sorted((tmp_path / "samples").glob("*.wav"))
    assert wavs
    clip, rate = sf.read(wavs[-1], dtype="float32")
    assert rate == RATE and clip.shape[0] == LENGTH and np.isfinite(clip).all()
