"""MRI from webdataset shards: the writer packs NIfTI files (bytes plus the voxel grid only) and skips what the
folder path skips; decoded validation items are the folder path's items; slice mode yields one slice each."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from webdataset.tariterators import tarfile_samples

from datamodules.base import call_seeded
from datamodules.shards import resolve_shards, write_shards
from src.domains import build_datamodule
from tests.helpers.mri import phantom, write_dicom_series, write_nifti

ROOT = Path(__file__).resolve().parents[2]
SHAPES = {"volume": [16, 16, 16], "slice": [16, 16]}


def make_niftis(root: Path) -> Path:
    """Five 24^3 phantoms at 2 mm (.nii and .nii.gz, one in a subfolder) and one file that is not NIfTI."""
    for i in range(5):
        name = f"sub{i}/t1.nii.gz" if i == 4 else f"head{i}.nii" + (".gz" if i % 2 else "")
        write_nifti(root / name, phantom(seed=i))
    (root / "bad.nii.gz").write_bytes(b"\x1f\x8bnot a nifti file at all")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    src = make_niftis(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("shards")
    summary = write_shards("mri", src, out, max_count=2, val_fraction=0.4, seed=0)
    return src, out, summary


def mri_dm(path, mode="volume", **kw):
    cfg = dict(name="mri", path=str(path), mode=mode, shape=SHAPES[mode], spacing=[3.0, 3.0, 3.0],
               val_fraction=0.4, max_bad_fraction=0.5, batch_size=2, num_workers=0, cache_workers=1, **kw)
    return build_datamodule(cfg, seed=0)


def samples(out: Path, split: str) -> list[dict]:
    train, val = resolve_shards(str(out))
    return list(tarfile_samples([{"url": u} for u in (train if split == "train" else val)]))


def test_writer_packs_bytes_and_grid_only_and_counts_the_bad_file(data):
    src, out, summary = data
    assert [s["path"] for s in summary["skipped"]] == ["bad.nii.gz"]
    assert "could not be read as NIfTI" in summary["skipped"][0]["reason"]
    assert summary["samples"] == {"train": 3, "val": 2}
    assert max(s["samples"] for s in summary["shards"].values()) <= 2
    every = samples(out, "train") + samples(out, "val")
    for s in every:
        meta = json.loads(s["json"])
        assert set(meta) == {"path", "shape", "spacing"}  # nothing from the header beyond the voxel grid
        assert meta["shape"] == [24, 24, 24] and meta["spacing"] == [2.0, 2.0, 2.0]
        member = "nii.gz" if meta["path"].endswith(".gz") else "nii"
        assert s[member] == (src / meta["path"]).read_bytes()
    assert {m for s in every for m in ("nii", "nii.gz") if m in s} == {"nii", "nii.gz"}


def test_writer_names_dicom_series_as_unsupported(tmp_path):
    src = tmp_path / "src"
    write_nifti(src / "a.nii.gz", phantom(seed=1))
    write_dicom_series(src / "series1", phantom((24, 24, 4), seed=2))
    summary = write_shards("mri", src, tmp_path / "out", val_fraction=0.0)
    assert summary["samples"]["train"] == 1
    assert [s["path"] for s in summary["skipped"]] == ["series1"]
    assert "DICOM series" in summary["skipped"][0]["reason"] and "NIfTI" in summary["skipped"][0]["reason"]


def test_volume_validation_from_shards_equals_the_folder_path(data):
    src, out, _ = data
    folder_dm, shard_dm = mri_dm(src), mri_dm(out)
    for dm in (folder_dm, shard_dm):
        dm.setup("fit")
    assert shard_dm.is_streaming and shard_dm.train_set is None  # no volume decoded at setup
    folder = torch.cat([b["x"] for b in folder_dm.val_dataloader()])
    shards = torch.cat([b["x"] for b in shard_dm.val_dataloader()])
    assert shards.shape == (2, 1, 16, 16, 16)
    assert torch.equal(shards, folder)
    assert shards.min() >= -1 and shards.max() <= 1 and shards.max() > 0


def test_slice_items_from_shards(data):
    src, out, _ = data
    folder_dm = mri_dm(src, "slice")
    folder_dm.setup("fit")
    val = folder_dm.val_set
    volumes = list(dict.fromkeys(v for v, _ in val.index))  # validation volumes in the split's order
    decode = mri_dm(out, "slice").shard_decoder(False)
    for k, s in enumerate(samples(out, "val")):
        x = decode(s)["x"]
        assert x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
        rows = [r for r, (v, _) in enumerate(val.index) if v == volumes[k]]
        middle = rows[len(rows) // 2]  # the middle non-empty slice, as the folder path indexes them
        assert torch.equal(x, val[middle]["x"])
    train = mri_dm(out, "slice").shard_decoder(True)
    sample = samples(out, "train")[0]
    draws = [call_seeded(seed, train, sample)["x"] for seed in range(6)]
    assert torch.equal(draws[0], call_seeded(0, train, sample)["x"])  # seeded per draw: replays on resume
    assert len({tuple(x.flatten().tolist()) for x in draws}) > 1
    assert all(x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1 for x in draws)
    pickle.loads(pickle.dumps(train))  # DataLoader workers may need to pickle the decoder


def test_unreadable_member_is_a_value_error(data):
    _, out, _ = data
    decode = mri_dm(out).shard_decoder(True)
    with pytest.raises(ValueError, match="no NIfTI member"):
        decode({"__key__": "k", "json": b"{}"})
    with pytest.raises(ValueError, match="could not be decoded"):
        decode({"__key__": "k", "nii": b"\x5c\x01" + b"\x00" * 400})


@pytest.mark.slow
def test_train_from_mri_shards_in_slice_mode(data, tmp_path):
    _, out, _ = data
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", "domain=mri", "experiment=smoke", f"datamodule.path={out}",
         "datamodule.mode=slice", "datamodule.shape=[16,16]", "logger=none", "trainer.max_steps=4",
         "trainer.val_check_interval=2", "sampling.num=1", "sampling.steps=2", f"paths.output_dir={run}",
         "trainer.enable_progress_bar=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").exists()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
