"""cond=text: captions from sidecars, a CSV, a datalist key and shards; training through the Hydra entry point in
image (pixel), audio and MRI (slices, and volumes from a datalist) with the built-in, CLIP and T5 encoders;
sampling with prompt= and prompts=FILE; the bad inputs (missing captions, prompt= on a model without text) and
privacy of captions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.base import DataError
from datamodules.captions import CaptionError, sidecar_path
from datamodules.shards import write_shards
from src.domains.audio.data import AudioDataModule
from src.domains.image.data import ImageDataModule
from src.errors import ConfigError
from src.sample import main as sample_main
from src.train import train
from tests.conftest import ROOT, compose
from tests.data.test_labels_data import TINY
from tests.helpers.text import DIGIT_WORDS, captioned_digits, tiny_clip, tiny_t5

TEXT_TINY = [*TINY, "cond=text", "cond.dim=16", "cond.heads=2", "cond.layers=1", "cond.max_length=24",
             "datamodule.resolution=16", "datamodule.channels=1", "sampling.num=4"]


def image_dm(path, **kw):
    return ImageDataModule(path=str(path), resolution=16, channels=1, batch_size=4, num_workers=0,
                           val_fraction=0.2, **kw)


def all_items(dm):
    return [ds[i] for ds in (dm.train_set, dm.val_set) for i in range(len(ds))]


def test_sidecar_names():
    assert sidecar_path("/d/cat.png").name == "cat.txt"
    assert sidecar_path("/d/scan.nii.gz").name == "scan.txt"


@pytest.mark.parametrize("csv", [False, True])
def test_captions_from_sidecars_or_a_csv_reach_every_item(tmp_path, csv):
    captioned_digits(tmp_path / "d", csv=csv)
    kw = {"captions_csv": str(tmp_path / "d" / "captions.csv")} if csv else {}
    dm = image_dm(tmp_path / "d", captions="auto", **kw)
    dm.setup()
    items = all_items(dm)
    assert len(items) == 12
    assert {it["caption"] for it in items} == {"the digit zero", "the digit one"}
    assert set(dm.caption_samples(4)) <= {"the digit zero", "the digit one"}
    plain = image_dm(tmp_path / "d")
    plain.setup()
    assert "caption" not in plain.train_set[0]  # without cond=text the items carry none


def test_missing_captions_are_counted_then_refused_past_the_limit(tmp_path, caplog):
    captioned_digits(tmp_path / "d")
    (tmp_path / "d" / "d0_0.txt").unlink()
    (tmp_path / "d" / "d1_0.txt").write_text("  \n")  # empty counts as missing
    with caplog.at_level(logging.WARNING):
        dm = image_dm(tmp_path / "d", captions="sidecar", max_bad_fraction=0.2)
        dm.setup()
    assert len(all_items(dm)) == 10 and "Skipping 2 of 12 items without a caption" in caplog.text
    with pytest.raises(CaptionError) as e:
        image_dm(tmp_path / "d", captions="sidecar", max_bad_fraction=0.1).setup()
    msg = str(e.value)
    assert msg.startswith("2 of 12 items have no caption (more than datamodule.max_bad_fraction=0.1)")
    assert "d0_0.png (no caption file d0_0.txt beside it)" in msg and "d1_0.txt is empty" in msg
    assert "write a FILE.txt beside each file" in msg


def test_caption_csv_problems_are_one_sentence(tmp_path):
    captioned_digits(tmp_path / "d", csv=True)
    with pytest.raises(CaptionError, match="has no column 'text'"):
        image_dm(tmp_path / "d", captions="csv", captions_csv=str(tmp_path / "d" / "captions.csv"),
                 captions_column="text").setup()
    with pytest.raises(CaptionError, match="does not exist"):
        image_dm(tmp_path / "d", captions="csv", captions_csv=str(tmp_path / "none.csv")).setup()


def test_builtin_images_caption_themselves_and_builtin_audio_refuses():
    dm = ImageDataModule(resolution=16, channels=3, builtin_size=8, batch_size=2, num_workers=0, captions="auto")
    dm.setup()
    item = dm.train_set[0]
    assert item["caption"].startswith("a ") and item["caption"].split()[-1] in ("circle", "square", "triangle")
    audio = AudioDataModule(builtin_size=4, num_workers=0, captions="auto")
    with pytest.raises(DataError, match="built-in data of this domain has no captions"):
        audio.setup()


def test_shards_carry_captions_packed_from_sidecars(tmp_path):
    captioned_digits(tmp_path / "d")
    (tmp_path / "d" / "d0_0.txt").unlink()
    summary = write_shards("image", tmp_path / "d", tmp_path / "shards", max_count=5, val_fraction=0.2,
                           captions="sidecar")
    assert [s["path"] for s in summary["skipped"]] == ["d0_0.png"]
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tf:
        names = tf.getnames()
        txt = tf.extractfile(next(m for m in tf if m.name.endswith(".txt"))).read().decode()
    assert any(n.endswith(".png") for n in names) and txt.startswith("the digit ")
    dm = image_dm(tmp_path / "shards", captions="auto")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["caption"]) == 4 and all(c.startswith("the digit ") for c in batch["caption"])


def test_mri_captions_from_a_datalist_key(tmp_path):
    from src.domains.mri.data import MRIDataModule
    from tests.helpers.mri import phantom, write_nifti

    entries = []
    for i in range(4):
        write_nifti(tmp_path / "scans" / f"case{i}.nii.gz", phantom((16, 16, 16), seed=i))
        entries.append({"image": f"./scans/case{i}.nii.gz", "report": f"T1 axial, case {i}"})
    del entries[3]["report"]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    kw = dict(mode="volume", shape=(16, 16, 16), spacing=(3.0, 3.0, 3.0), num_workers=0, cache_workers=1,
              val_fraction=0.25, captions="auto", captions_column="report")
    dm = MRIDataModule(path=str(tmp_path / "dataset.json"), max_bad_fraction=0.3, **kw)
    dm.setup()
    got = sorted(it["caption"] for it in all_items(dm))
    assert got == [f"T1 axial, case {i}" for i in range(3)]  # case 3 has none: counted and dropped
    with pytest.raises(CaptionError, match="case3.nii.gz \\(no 'report' in its datalist entry\\)"):
        MRIDataModule(path=str(tmp_path / "dataset.json"), max_bad_fraction=0.1, **kw).setup()


# ---- end to end: training through the Hydra config and src.train.train, sampling through src.sample's main ----
# (in this process; the command line of src.train with cond=text: test_bad_text_inputs_stop_with_one_sentence)
def train_run(overrides: list[str]) -> dict:
    res = train(compose(overrides))
    assert res["global_step"] > 0 and res["nonfinite"] is None, res
    return res


@pytest.mark.slow
def test_image_text_training_and_sampling_with_prompts(tmp_path, capsys):
    captioned_digits(tmp_path / "d")
    out = tmp_path / "run"
    train_run(["domain=image", f"datamodule.path={tmp_path / 'd'}", f"paths.output_dir={out}", *TEXT_TINY])
    ckpt = out / "checkpoints" / "last.ckpt"
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["cond"]["kind"] == "text" and hp["cond"]["encoder"] == "builtin"
    assert (out / "samples" / "prompts.txt").read_text().splitlines()[0].startswith("the digit ")
    assert len(list((out / "samples").glob("step*.png"))) == 4  # two prompts, two samples each
    capsys.readouterr()
    sample_main([f"ckpt={ckpt}", "prompt=the digit one", "guidance=3", "num_samples=2", "steps=2", "device=cpu",
                 f"out={tmp_path / 'one'}"])
    assert sorted(p.name for p in (tmp_path / "one").glob("*.png")) == ["sample_p000_00000.png",
                                                                      "sample_p000_00001.png"]
    assert (tmp_path / "one" / "prompts.txt").read_text() == "the digit one\n"
    assert "prompts: 1" in capsys.readouterr().out
    (tmp_path / "prompts.txt").write_text("the digit zero\n\nthe digit one\n")
    sample_main([f"ckpt={ckpt}", f"prompts={tmp_path / 'prompts.txt'}", "guidance=2", "num_samples=2", "steps=2",
                 "device=cpu", f"out={tmp_path / 'many'}"])
    names = sorted(p.name for p in (tmp_path / "many").glob("sample_p*.png"))
    assert names == [f"sample_p{k:03d}_{i:05d}.png" for k in range(2) for i in range(2)]
    assert (tmp_path / "many" / "prompts.txt").read_text().splitlines() == ["the digit zero", "the digit one"]
    assert (tmp_path / "many" / "sample_grid.png").is_file()


@pytest.mark.slow
def test_image_with_a_clip_encoder_and_csv_captions(tmp_path):
    captioned_digits(tmp_path / "d", csv=True)
    enc = tiny_clip(tmp_path / "clip")
    out = tmp_path / "run"
    train_run(["domain=image", f"datamodule.path={tmp_path / 'd'}", f"paths.output_dir={out}", *TEXT_TINY,
               f"datamodule.captions_csv={tmp_path / 'd' / 'captions.csv'}", "cond.encoder=clip",
               f"cond.encoder_path={enc}"])
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["cond"]["encoder"] == "clip"
    assert not any("text_model" in k for k in state["state_dict"])  # the frozen encoder stays out of checkpoints
    sample_main([f"ckpt={ckpt}", "prompt=the digit zero", "guidance=3", "num_samples=2", "steps=2", "device=cpu",
                 f"out={tmp_path / 's'}"])
    assert len(list((tmp_path / "s").glob("sample_p000_*.png"))) == 2


@pytest.mark.slow
def test_audio_with_a_t5_encoder(tmp_path):
    t = np.arange(2000) / 8000
    for k, (word, freq) in enumerate([("low", 220.0), ("high", 1760.0)] * 3):
        sf.write(tmp_path / f"t{k}.wav", (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000)
        (tmp_path / f"t{k}.txt").write_text(f"a {word} tone")
    enc = tiny_t5(tmp_path / "t5")
    out = tmp_path / "run"
    train_run(["domain=audio", f"datamodule.path={tmp_path}", "datamodule.sample_rate=8000",
               "datamodule.clip_seconds=0.128", f"paths.output_dir={out}", *TINY, "cond=text", "cond.encoder=t5",
               f"cond.encoder_path={enc}", "cond.max_length=16", "sampling.num=2"])
    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "prompt=a low tone", "guidance=2", "num_samples=1",
                 "steps=2", "device=cpu", f"out={tmp_path / 's'}"])
    data, rate = sf.read(tmp_path / "s" / "sample_p000_00000.wav")
    assert rate == 8000 and data.shape[0] == 1024 and np.isfinite(data).all()


@pytest.mark.slow
def test_mri_slices_with_sidecar_captions(tmp_path):
    import nibabel as nib

    from tests.helpers.mri import phantom, write_nifti

    for i in range(3):
        write_nifti(tmp_path / "scans" / f"case{i}.nii.gz", phantom((16, 16, 16), seed=i))
        (tmp_path / "scans" / f"case{i}.txt").write_text(f"T1 axial, lesion {'left' if i % 2 else 'right'}")
    out = tmp_path / "run"
    train_run(["domain=mri", "experiment=smoke", "datamodule.mode=slice", "datamodule.shape=[16,16]",
               "datamodule.batch_size=4", "metrics.num_samples=2", f"datamodule.path={tmp_path / 'scans'}",
               f"paths.output_dir={out}", "trainer.max_steps=2",
               "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "checkpoint.every_n_steps=2",
               "sampling.every_n_steps=2", "sampling.num=2", "sampling.steps=2", "optim.warmup_steps=1",
               "trainer.enable_progress_bar=false", "cond=text", "cond.dim=16", "cond.heads=2", "cond.layers=1",
               "logger=none"])
    hp = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["cond"]["kind"] == "text"
    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "prompt=T1 axial, lesion left", "num_samples=1",
                 "steps=2", "device=cpu", f"out={tmp_path / 's'}"])
    assert nib.load(tmp_path / "s" / "sample_p000_00000.nii.gz").shape[:2] == (16, 16)


def test_mri_volumes_with_datalist_captions(tmp_path):
    """3D: report phrases from a datalist key reach the 3D UNet's cross-attention; a prompt samples a volume."""
    import nibabel as nib

    from tests.helpers.mri import phantom, write_nifti

    entries = []
    for i in range(3):
        write_nifti(tmp_path / "scans" / f"case{i}.nii.gz", phantom((16, 16, 16), seed=i))
        side = "left" if i % 2 else "right"
        entries.append({"image": f"./scans/case{i}.nii.gz", "report": f"T2 axial, lesion {side}"})
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    out = tmp_path / "run"
    train_run(["domain=mri", "experiment=smoke", "datamodule.mode=volume", "datamodule.shape=[16,16,16]",
               "datamodule.spacing=[3.0,3.0,3.0]", "datamodule.batch_size=2", "datamodule.val_fraction=0.34",
               "metrics.num_samples=1", f"datamodule.path={tmp_path / 'dataset.json'}",
               "datamodule.captions_column=report",
               f"paths.output_dir={out}", "trainer.max_steps=2", "trainer.val_check_interval=2",
               "trainer.limit_val_batches=1", "checkpoint.every_n_steps=2", "sampling.every_n_steps=2",
               "sampling.num=1", "sampling.steps=2", "optim.warmup_steps=1", "trainer.enable_progress_bar=false",
               "cond=text", "cond.dim=16", "cond.heads=2", "cond.layers=1", "logger=none"])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["cond"]["kind"] == "text"
    assert ckpt["hyper_parameters"]["backbone"]["spatial_dims"] == 3
    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "prompt=T2 axial, lesion left", "num_samples=1",
                 "steps=2", "device=cpu", f"out={tmp_path / 's'}"])
    assert nib.load(tmp_path / "s" / "sample_p000_00000.nii.gz").shape[:3] == (16, 16, 16)
    assert (tmp_path / "s" / "prompts.txt").read_text().splitlines() == ["T2 axial, lesion left"]


def run_fails(args):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_bad_text_inputs_stop_with_one_sentence(tmp_path, capsys):
    captioned_digits(tmp_path / "d")
    for f in list((tmp_path / "d").glob("d0_*.txt")):
        f.unlink()
    # the command line: exit status 2, the sentence on stderr, no run folder left behind
    proc = run_fails(["src.train", "domain=image", f"datamodule.path={tmp_path / 'd'}",
                      f"paths.output_dir={tmp_path / 'bad'}", *TEXT_TINY])
    assert proc.returncode == 2 and "6 of 12 items have no caption" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()  # nothing written
    with pytest.raises(ConfigError, match=f"cond.encoder_path={tmp_path / 'nowhere'} is not a folder"):
        train(compose(["domain=image", f"paths.output_dir={tmp_path / 'enc'}", *TEXT_TINY, "cond.encoder=t5",
                       f"cond.encoder_path={tmp_path / 'nowhere'}"]))
    # a model trained without text takes no prompt
    out = tmp_path / "plain"
    train_run(["domain=image", f"datamodule.path={tmp_path / 'd'}", f"paths.output_dir={out}", *TINY,
               "datamodule.resolution=16", "datamodule.channels=1", "trainer.max_steps=1", "sampling.num=0"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "prompt=the digit one", "num_samples=1", "steps=2",
                     f"out={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "prompt= needs a text-conditional checkpoint (trained with cond=text)" in err
    assert err.count("\n") == 1  # one sentence, no traceback


@pytest.mark.slow
@pytest.mark.parametrize("private", [True, False])
def test_captions_leave_the_machine_only_without_patient_data(tmp_path, private):
    import wandb

    from src.report.__main__ import main as report_main

    captioned_digits(tmp_path / "d", digits=(3, 7))
    out = tmp_path / "run"
    try:
        train_run(["domain=image", f"datamodule.path={tmp_path / 'd'}", f"paths.output_dir={out}", *TEXT_TINY,
                   "trainer.max_steps=2", "sampling.every_n_steps=2", "checkpoint.every_n_steps=2", "logger=wandb",
                   f"privacy.patient_data={str(private).lower()}"])
        assert (wandb.run is None) == private  # a patient-data run closes its W&B run itself
    finally:  # what the end of `python -m src.train` does: the run finished and its files written and closed
        wandb.finish()
        wandb.teardown()
    words = [f"the digit {DIGIT_WORDS[d]}" for d in (3, 7)]
    files = [p for p in (out / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "no W&B offline run was written"
    blobs = b"".join(p.read_bytes() for p in files)
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stored = json.dumps({"rc": state["run_config"], "hp": state["hyper_parameters"]}, default=str)
    assert report_main([str(out), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert not any(w in stored for w in words)  # captions are data: never in the checkpoint's config
    if private:
        assert not any(w.encode() in blobs for w in words) and not any(w in page for w in words)
        assert b"one row per prompt: 0, 1" in blobs  # indices only
    else:
        assert any(w.encode() in blobs for w in words) and any(w in page for w in words)
