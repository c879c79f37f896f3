"""Class labels through the real datamodules: class subfolders, a CSV, labelled shards, their errors, and
`cond=class` end to end (train on a labelled folder, then `src.sample label=all`) for images and audio."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from datamodules.shards import write_shards
from src.domains.audio.data import AudioDataModule
from src.domains.image.data import ImageDataModule
from src.errors import ConfigError, DataError

DIGITS = (0, 3, 7)


def digit_folder(root: Path, per_class: int = 6, classes=DIGITS) -> dict[str, int]:
    """Real handwritten digits (scikit-learn's load_digits) as 16x16 PNGs in one subfolder per digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    truth = {}
    for c in classes:
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(d.target == c)[:per_class]):
            img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16))
            rel = f"{c}/d{k}.png"
            img.save(root / rel)
            truth[rel] = c
    return truth


def tone_folder(root: Path, per_class: int = 4, nested: bool = True) -> dict[str, str]:
    """Short sine clips: a low and a high tone class, in subfolders (or loose when ``nested`` is false)."""
    truth = {}
    t = np.arange(2000) / 8000
    for name, freq in (("low", 220.0), ("high", 1760.0)):
        for k in range(per_class):
            rel = f"{name}/t{k}.wav" if nested else f"{name}_t{k}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, (0.5 * np.sin(2 * np.pi * freq * (1 + 0.01 * k) * t)).astype(np.float32), 8000)
            truth[rel] = name
    return truth


def image_dm(path, **kw):
    return ImageDataModule(path=str(path), resolution=16, channels=1, batch_size=4, num_workers=0,
                           val_fraction=0.2, **kw)


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_labels_from_class_subfolders_in_train_and_val(tmp_path):
    truth = digit_folder(tmp_path / "digits")
    dm = image_dm(tmp_path / "digits", labels="auto")
    assert dm.classes == ["0", "3", "7"]  # before setup, as src.train needs it for the checkpoint
    dm.setup()
    for ds in (dm.train_set, dm.val_set):
        assert len(ds) > 0
        for f, item in zip(ds.files, items(ds)):
            rel = f.relative_to(tmp_path / "digits").as_posix()
            assert dm.classes[item["label"]] == str(truth[rel])
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    # without cond=class the same folder gives unlabelled items
    plain = image_dm(tmp_path / "digits")
    plain.setup()
    assert plain.classes is None and "label" not in plain.train_set[0]


def test_labels_from_a_csv_column_through_the_audio_datamodule(tmp_path):
    truth = tone_folder(tmp_path / "clips", nested=False)
    table = tmp_path / "meta.csv"
    rows = [f"{rel},{'bass' if name == 'low' else 'treble'},{name}" for rel, name in truth.items()]
    table.write_text("file,pitch,raw\n" + "\n".join(rows) + "\n")
    dm = AudioDataModule(path=str(tmp_path / "clips"), sample_rate=8000, clip_seconds=0.1, batch_size=2,
                         num_workers=0, val_fraction=0.25, labels="auto", labels_csv=str(table),
                         labels_column="pitch")
    assert dm.classes == ["bass", "treble"]
    dm.setup()
    seen = []
    for ds in (dm.train_set, dm.val_set):
        for f, item in zip(ds.files, items(ds)):
            name = truth[f.path.relative_to(tmp_path / "clips").as_posix()]
            assert dm.classes[item["label"]] == ("bass" if name == "low" else "treble")
            assert item["x"].shape == (1, 800)
            seen.append(item["label"])
    assert sorted(set(seen)) == [0, 1] and len(seen) == len(truth)



def test_csv_labels_with_a_relative_datamodule_path(tmp_path, monkeypatch):
    truth = tone_folder(tmp_path / "data" / "clips")
    (tmp_path / "l.csv").write_text("file,label\n" + "".join(f"{r},{n}\n" for r, n in truth.items()))
    monkeypatch.chdir(tmp_path)
    dm = AudioDataModule(path="data/clips", sample_rate=8000, clip_seconds=0.1, num_workers=0,
                         labels="auto", labels_csv="l.csv")
    assert dm.classes == ["high", "low"]
    dm.setup()
    for ds in (dm.train_set, dm.val_set):
        for f, item in zip(ds.files, items(ds)):
            assert dm.classes[item["label"]] == f.path.parent.name


def test_bad_label_sources_are_one_sentence_errors(tmp_path):
    tone_folder(tmp_path / "flat", nested=False)
    flat = AudioDataModule(path=str(tmp_path / "flat"), sample_rate=8000, clip_seconds=0.1, num_workers=0,
                           labels="auto")
    with pytest.raises(DataError, match="class subfolder"):
        _ = flat.classes
    truth = tone_folder(tmp_path / "clips")
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{rel},{n}\n" for rel, n in truth.items()) + "gone/x.wav,low\n")

    def csv_dm(**kw):
        return AudioDataModule(path=str(tmp_path / "clips"), sample_rate=8000, clip_seconds=0.1,
                               num_workers=0, labels="csv", labels_csv=str(table), **kw)

    with pytest.raises(DataError, match=r"names 1 files that are not under .*gone/x\.wav"):
        _ = csv_dm().classes
    table.write_text("file,label\n" + "".join(f"{rel},{n}\n" for rel, n in truth.items()))
    assert csv_dm().classes == ["high", "low"]
    with pytest.raises(DataError, match="no column 'species'"):
        _ = csv_dm(labels_column="species").classes
    with pytest.raises(ConfigError, match="needs datamodule.labels_csv"):
        AudioDataModule(path=str(tmp_path / "clips"), labels="csv")
    with pytest.raises(ConfigError, match="datamodule.labels must be one of"):
        AudioDataModule(path=str(tmp_path / "clips"), labels="subfolders")
    builtin = ImageDataModule(labels="auto", num_workers=0)
    with pytest.raises(DataError, match="built-in data has no classes"):
        _ = builtin.classes
    with pytest.raises(DataError, match="built-in data has no classes"):
        builtin.setup()


def _shard_batches(dm, n):
    loader = dm.train_dataloader()
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_labelled_shards_carry_the_label_in_each_samples_json(tmp_path):
    truth = digit_folder(tmp_path / "digits")
    summary = write_shards("image", tmp_path / "digits", tmp_path / "shards", max_count=5, val_fraction=0.2,
                           labels="folders")
    assert summary["classes"] == ["0", "3", "7"]
    import tarfile

    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tf:
        meta = json.loads(tf.extractfile(next(m for m in tf if m.name.endswith(".json"))).read())
    assert summary["classes"][meta["label"]] == meta["class"] == str(truth[meta["path"]])

    dm = image_dm(tmp_path / "shards", labels="auto")
    assert dm.is_streaming and dm.classes == ["0", "3", "7"]
    dm.setup()
    checked = 0
    for batch in _shard_batches(dm, 3):
        for key, label in zip(batch["__key__"], batch["label"].tolist()):
            folder = key.split("/")[0]
            assert dm.classes[label] == folder
            checked += 1
    assert checked == 12
    val = next(iter(dm.val_dataloader()))
    assert all(dm.classes[lab] == k.split("/")[0] for k, lab in zip(val["__key__"], val["label"].tolist()))
    # unlabelled readers of labelled shards see plain items
    assert "label" not in _shard_batches(image_dm(tmp_path / "shards"), 1)[0]


def test_shards_without_labels_or_with_a_label_out_of_range_are_refused(tmp_path):
    digit_folder(tmp_path / "digits", per_class=3)
    write_shards("image", tmp_path / "digits", tmp_path / "plain", val_fraction=0.2)
    with pytest.raises(DataError, match="carry no class labels"):
        _ = image_dm(tmp_path / "plain", labels="auto").classes

    write_shards("image", tmp_path / "digits", tmp_path / "bad", val_fraction=0.2, labels="folders")
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    summary["classes"] = summary["classes"][:1]  # the map now says one class; samples of class 1, 2 remain
    (tmp_path / "bad" / "summary.json").write_text(json.dumps(summary))
    dm = image_dm(tmp_path / "bad", labels="auto")
    dm.setup()
    with pytest.raises(DataError, match=r"has label [12], outside the 1 classes"):
        _shard_batches(dm, 3)

    # shards whose samples lack the label although the summary lists classes
    write_shards("image", tmp_path / "digits", tmp_path / "nolabel", val_fraction=0.2)
    summary = json.loads((tmp_path / "nolabel" / "summary.json").read_text())
    (tmp_path / "nolabel" / "summary.json").write_text(json.dumps({**summary, "classes": ["0", "3", "7"]}))
    dm = image_dm(tmp_path / "nolabel", labels="auto")
    dm.setup()
    with pytest.raises(DataError, match="carries no class label in its json"):
        _shard_batches(dm, 1)


def test_shard_writer_cli_packs_labels_from_a_csv(tmp_path):
    from datamodules.shards import main

    truth = tone_folder(tmp_path / "clips", nested=False)
    (tmp_path / "l.csv").write_text("file,kind\n" + "".join(f"{r},{n}\n" for r, n in truth.items()))
    assert main(["--domain", "audio", "--src", str(tmp_path / "clips"), "--out", str(tmp_path / "s"),
                 "--labels", "csv", "--labels-csv", str(tmp_path / "l.csv"), "--labels-column", "kind"]) == 0
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["classes"] == ["high", "low"]
    assert main(["--domain", "audio", "--src", str(tmp_path / "clips"), "--out", str(tmp_path / "s2"),
                 "--labels", "folders"]) == 2  # loose files: no class subfolder


TINY = ["experiment=smoke", "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "sampling.every_n_steps=4", "sampling.steps=2", "checkpoint.every_n_steps=4",
        "trainer.enable_progress_bar=false", "datamodule.batch_size=4", "optim.warmup_steps=1"]


def train_then_sample(compose_cfg, capsys, train_overrides: list[str], sample_args: list[str]) -> str:
    """``src.train`` then ``src.sample`` in this process (the commands call the same functions; their command
    lines are tested in tests/cli): what the sampler printed."""
    from src.sample import main as sample_main
    from src.train import train

    train(compose_cfg([*train_overrides, *TINY]))
    capsys.readouterr()
    sample_main(sample_args)
    return capsys.readouterr().out


@pytest.mark.slow
def test_image_cond_class_end_to_end_writes_a_per_class_grid(compose_cfg, capsys, tmp_path):
    digit_folder(tmp_path / "digits")
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "last.ckpt"
    printed = train_then_sample(
        compose_cfg, capsys,
        ["domain=image", f"datamodule.path={tmp_path / 'digits'}", "cond=class", "datamodule.resolution=16",
         "datamodule.channels=1", f"paths.output_dir={out}"],
        [f"ckpt={ckpt}", "label=all", "guidance=2", "num_samples=2", "steps=2", "device=cpu",
         f"out={tmp_path / 'drawn'}"])
    hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["cond"]["classes"] == ["0", "3", "7"] and hp["cond"]["num_classes"] == 3  # label map round trip
    assert "0=0" in printed and "2=7" in printed
    names = sorted(p.name for p in (tmp_path / "drawn").glob("sample_c*.png"))
    assert names == [f"sample_c{c:03d}_{k:05d}.png" for c in range(3) for k in range(2)]
    grid = Image.open(tmp_path / "drawn" / "sample_grid.png")
    assert grid.size == (2 * (16 + 2) + 2, 3 * (16 + 2) + 2)  # two per row, one row per class


@pytest.mark.slow
def test_audio_cond_class_end_to_end_writes_clips_per_class(compose_cfg, capsys, tmp_path):
    tone_folder(tmp_path / "clips")
    out = tmp_path / "run"
    ckpt = out / "checkpoints" / "last.ckpt"
    train_then_sample(
        compose_cfg, capsys,
        ["domain=audio", f"datamodule.path={tmp_path / 'clips'}", "cond=class", "datamodule.sample_rate=8000",
         "datamodule.clip_seconds=0.128", f"paths.output_dir={out}"],
        [f"ckpt={ckpt}", "label=all", "guidance=2", "num_samples=2", "steps=2", "device=cpu",
         f"out={tmp_path / 'drawn'}"])
    hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["cond"]["classes"] == ["high", "low"]
    clips = sorted((tmp_path / "drawn").glob("sample_c*.wav"))
    assert [p.name for p in clips] == [f"sample_c{c:03d}_{k:05d}.wav" for c in range(2) for k in range(2)]
    for p in clips:
        data, rate = sf.read(p)
        assert rate == 8000 and data.shape[0] == 1024 and np.isfinite(data).all()
    from src.domains.audio.media import spectrogram_image

    tile = spectrogram_image(torch.from_numpy(sf.read(clips[0], dtype="float32")[0])[None], 8000)
    grid = np.asarray(Image.open(tmp_path / "drawn" / "sample_grid.png"))
    th, tw = tile.shape[:2]
    assert grid.shape == (2 * (th + 2) + 2, 2 * (tw + 2) + 2, 3)  # spectrograms: two per row, a row per class
    assert grid[2:2 + th, 2:2 + tw].std() > 0
    # a class by its name (the label map the checkpoint keeps): the same files as its index
    from src.sample import main as sample_main

    common = [f"ckpt={ckpt}", "guidance=2", "num_samples=1", "steps=2", "seed=3", "device=cpu", "progress=off"]
    sample_main([*common, "label=low", f"out={tmp_path / 'by_name'}"])
    sample_main([*common, "label=1", f"out={tmp_path / 'by_index'}"])
    by_name, by_index = (sf.read(tmp_path / d / "sample_c001_00000.wav")[0] for d in ("by_name", "by_index"))
    assert np.array_equal(by_name, by_index)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sample_main([*common, "label=loww", f"out={tmp_path / 'typo'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "label=loww is not a class of" in err and "its classes are high, low" in err
    assert not (tmp_path / "typo").exists()


def mri_dm(path, **kw):
    from src.domains.mri.data import MRIDataModule

    return MRIDataModule(path=str(path), mode="volume", shape=(16, 16, 16), spacing=(3.0, 3.0, 3.0),
                         num_workers=0, cache_workers=1, val_fraction=0.25, **kw)


def test_mri_labels_from_subfolders_and_from_a_datalist_key(tmp_path):
    from tests.helpers.mri import phantom, write_nifti

    for i, cls in enumerate(["healthy", "healthy", "lesion", "lesion"]):
        write_nifti(tmp_path / "scans" / cls / f"case{i}.nii.gz", phantom((16, 16, 16), seed=i))
    d = mri_dm(tmp_path / "scans", labels="auto")
    assert d.classes == ["healthy", "lesion"]
    d.setup()
    got = [d.train_set[i]["label"] for i in range(len(d.train_set))] + \
        [d.val_set[i]["label"] for i in range(len(d.val_set))]
    assert sorted(got) == [0, 0, 1, 1]

    entries = [{"image": f"./scans/{c}/case{i}.nii.gz", "label": f"./seg{i}.nii.gz", "group": c}
               for i, c in enumerate(["healthy", "healthy", "lesion", "lesion"])]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(DataError, match="a segmentation rather than a class"):
        _ = mri_dm(tmp_path / "dataset.json", labels="auto").classes
    listed = mri_dm(tmp_path / "dataset.json", labels="auto", labels_column="group")
    assert listed.classes == ["healthy", "lesion"]
    listed.setup()
    checked = 0
    for ds in (listed.train_set, listed.val_set):
        for i, (v, _) in enumerate(ds.index):
            assert f"/{listed.classes[ds[i]['label']]}/" in listed_key(ds, v)
            checked += 1
    assert checked == 4
    del entries[1]["group"]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(DataError, match="entry 1 of 'training' has no class under 'group'"):
        _ = mri_dm(tmp_path / "dataset.json", labels="auto", labels_column="group").classes


def listed_key(ds, v):
    """The image path of cached volume ``v``."""
    from src.domains.mri.transforms import KEY

    return str(ds.volumes.data[v][KEY])


def test_a_single_class_folder_is_warned_about(tmp_path, caplog):
    digit_folder(tmp_path / "digits", per_class=3, classes=(5,))
    with caplog.at_level("WARNING", logger="datamodules.base"):
        assert image_dm(tmp_path / "digits", labels="folders").classes == ["5"]
    assert "one class '5'" in caplog.text


def test_train_cond_class_on_a_folder_without_subfolders_stops_with_one_sentence(compose_cfg, capsys, tmp_path):
    """What ``python -m src.train`` runs under Hydra (``main``), in this process: exit status 2 and one line;
    tests/cli/test_run_ux.py runs the command itself for a missing data folder."""
    from src.options import EXIT_BAD_INPUT
    from src.train import main

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(flat / f"x{i}.png")
    cfg = compose_cfg(["domain=image", f"datamodule.path={flat}", "cond=class", "logger=none",
                       f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as stop:  # a project error, not a traceback
        main.__wrapped__(cfg)
    assert stop.value.code == EXIT_BAD_INPUT == 2
    stderr = capsys.readouterr().err
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "lies directly in datamodule.path" in error[0] and "class subfolder" in error[0]
    assert not (tmp_path / "run").exists()  # the folder the failed run made is removed
