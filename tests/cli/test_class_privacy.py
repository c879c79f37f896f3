"""Class names under ``privacy.patient_data``: a label map read from folder names can name patients or sites.

With patient data the names stay out of everything W&B uploads (config, model hyper-parameters, sample
captions) and out of the shared report page, while the checkpoint keeps the label map that sampling needs;
without it the same run shows them. The second half is what keeps the first from passing vacuously.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.config import REDACTED, redact
from src.report.__main__ import main as report_main
from tests.helpers.dist import run_module

NAMES = ["patient_janet_doe", "site_oslo_ward7"]  # natural order: the label map is these, in this order
TINY = ["experiment=smoke", "logger=wandb", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "sampling.every_n_steps=2", "sampling.num=4", "sampling.steps=2",
        "checkpoint.every_n_steps=2", "trainer.enable_progress_bar=false", "datamodule.batch_size=4",
        "optim.warmup_steps=1", "datamodule.resolution=16", "datamodule.channels=1", "cond=class"]


def named_class_folder(root):
    from sklearn.datasets import load_digits

    d = load_digits()
    for digit, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(d.target == digit)[:5]):
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16)).save(root / name / f"{k}.png")
    return root


def test_redact_hides_class_names_but_keeps_the_count():
    cfg = {"cond": {"kind": "class", "num_classes": 2, "classes": NAMES}, "datamodule": {"path": "/d/x"}}
    out = redact(cfg, data_path=False, class_names=True)
    assert out["cond"] == {"kind": "class", "num_classes": 2, "classes": REDACTED}
    assert out["datamodule"]["path"] == "/d/x" and cfg["cond"]["classes"] == NAMES  # the input is untouched
    assert redact(cfg, data_path=False)["cond"]["classes"] == NAMES
    assert redact({"cond": {"classes": None}}, data_path=True, class_names=True)["cond"]["classes"] is None


def _blobs(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "no W&B offline run was written"
    return files, b"".join(p.read_bytes() for p in files)


@pytest.mark.slow
@pytest.mark.parametrize("private", [True, False])
def test_class_names_leave_the_machine_only_without_patient_data(tmp_path, private):
    data = named_class_folder(tmp_path / "cohort")
    out = tmp_path / "run"
    run_module("src.train", "domain=image", f"datamodule.path={data}", f"paths.output_dir={out}", *TINY,
               f"privacy.patient_data={str(private).lower()}", f"cond.classes=[{','.join(NAMES)}]", OMP_NUM_THREADS="1")
    # the checkpoint keeps the label map either way: src.sample names the classes from it
    hp = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["cond"]["classes"] == NAMES
    report = tmp_path / "report.html"
    assert report_main([str(out), "--out", str(report)]) == 0
    page = report.read_text()

    files, blobs = _blobs(out / "wandb")
    assert b"num_classes" in blobs  # the model's hyper-parameters and the config were logged
    if private:
        for p in files:
            for name in NAMES:
                assert name.encode() not in p.read_bytes(), f"{name!r} found in {p}"
        assert REDACTED.encode() in blobs
        assert b"one row per class: 0, 1" in blobs  # the sample grid's caption gives indices only
        assert "num_classes" in page and not any(name in page for name in NAMES)
        assert "cohort" not in page  # nor the data path
    else:
        for name in NAMES:
            assert name.encode() in blobs and name in page
        assert f"one row per class: 0 ({NAMES[0]}), 1 ({NAMES[1]})".encode() in blobs


def test_wandb_captions_name_classes_only_when_allowed():
    from types import SimpleNamespace

    from src.domains import build_media
    from src.runtime.callbacks import SampleCallback

    module = SimpleNamespace(cond_cfg={"classes": NAMES})
    label = torch.tensor([0, 0, 1, 1])
    media = build_media({"kind": "image"})
    shown = SampleCallback("unused", media, class_names=True)._class_captions(module, label)
    assert shown == [f"0 ({NAMES[0]})"] * 2 + [f"1 ({NAMES[1]})"] * 2
    assert SampleCallback("unused", media, class_names=False)._class_captions(module, label) == ["0", "0", "1", "1"]


def test_image_grid_on_wandb_has_one_row_per_class():
    from src.domains.image.media import ImageMedia

    samples = torch.rand(6, 1, 8, 8) * 2 - 1
    img = ImageMedia().to_wandb(samples, key="k", classes=["0", "0", "1", "1", "2", "2"])["k"]
    assert img.image.size == (2 * (8 + 2) + 2, 3 * (8 + 2) + 2)  # two per row, three rows
    assert img._caption == "6 EMA samples, one row per class: 0, 1, 2"


def test_audio_captions_carry_each_clips_class():
    from src.domains.audio.media import AudioMedia

    clips = torch.sin(torch.arange(1024.0) / 3).repeat(2, 1, 1) * 0.5
    logged = AudioMedia(8000).to_wandb(clips, key="k", classes=["0", "1 (dog)"])
    assert [a._caption for a in logged["k/audio"]] == ["EMA sample 0, class 0", "EMA sample 1, class 1 (dog)"]
    assert logged["k/spectrogram"][1]._caption == "EMA sample 1, class 1 (dog): log-mel spectrogram"
    assert AudioMedia(8000).to_wandb(clips, key="k")["k/audio"][0]._caption == "EMA sample 0"
