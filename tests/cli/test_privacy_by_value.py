"""Privacy by value (issue 28, rule 7): with ``privacy.patient_data=true`` no path and no file name of the data
reaches W&B, a checkpoint's ``run_config`` or the report, whatever the key that carries it.

A patient's name (``DOE^JANE``) is put in every path-like option of a smoke run, relative and absolute, and in
the data's file names; the W&B run files, every checkpoint and the report page are then searched for it. The
run folder's own ``config.yaml`` (which never leaves the machine) keeps it: that is what shows the name was
there to leak.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.config import REDACTED, data_names, looks_like_path, redact
from src.report.__main__ import main as report_main

ROOT = Path(__file__).resolve().parents[2]
NAME = "DOE^JANE"
TINY = ["experiment=smoke", "logger=wandb", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "sampling.every_n_steps=2", "sampling.num=2", "sampling.steps=2",
        "checkpoint.every_n_steps=1", "checkpoint.keep=2", "trainer.enable_progress_bar=false",
        "datamodule.batch_size=4", "optim.warmup_steps=1", "datamodule.resolution=16", "datamodule.channels=1",
        "datamodule.num_workers=0", "threads=1", "cond=class", "privacy.patient_data=true"]


def test_redact_judges_a_value_by_what_it_is():
    cfg = {"datamodule": {"labels_csv": f"{NAME}_labels.csv", "path": "cohort", "resolution": 16,
                          "note": f"scans/{NAME}", "extra": [f"{NAME}.nii.gz", "plain"], "odd": f"{NAME}.xyz"},
           "domain": {"name": "image"}, "trainer": {"precision": "bf16-mixed", "max_time": "00:00:10:00"}}
    out = redact(cfg, data_path=True, names={f"{NAME}.xyz"})
    dm = out["datamodule"]
    assert dm["labels_csv"] == dm["path"] == dm["note"] == dm["odd"] == REDACTED  # by value, key and data name
    assert dm["extra"] == [REDACTED, "plain"] and dm["resolution"] == 16
    assert out["domain"] == {"name": "image"} and out["trainer"] == cfg["trainer"]  # settings stay
    assert redact(cfg, data_path=False) == cfg
    assert looks_like_path("~/x") and looks_like_path("a\\b") and not looks_like_path("zero_anchored_percentile")


def _cohort(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(8):
        name = f"{NAME}_{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / name)
        rows.append(f"{name},{'ab'[i % 2]}")
    (folder.parent / f"{NAME}_labels.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_patient_name_in_every_path_and_file_name_reaches_no_shared_record(tmp_path):
    _cohort(tmp_path / f"{NAME}_cohort")
    assert f"{NAME}_003.png" in data_names(tmp_path / f"{NAME}_cohort")
    out = tmp_path / f"{NAME}_run"
    # relative paths (from the working folder) and absolute ones; Hydra needs the quotes for '^'
    args = [*TINY, f"datamodule.path='{NAME}_cohort'", f"datamodule.labels_csv='{NAME}_labels.csv'",
            f"paths.output_dir='{out}'"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "src.train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    needle = NAME.encode()
    assert needle in (out / "config.yaml").read_bytes()  # the local record has it: the checks below are not vacuous

    wandb_files = [p for p in (out / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in wandb_files), "no W&B offline run was written"
    blobs = b"".join(p.read_bytes() for p in wandb_files)
    assert b"labels_csv" in blobs and REDACTED.encode() in blobs  # the config was logged, redacted
    for p in wandb_files:
        assert needle not in p.read_bytes(), f"{NAME} found in {p}"

    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 2
    for c in ckpts:
        ckpt = torch.load(c, map_location="cpu", weights_only=True)
        assert NAME not in repr(ckpt["run_config"]), c
        assert ckpt["run_config"]["datamodule"]["labels_csv"] == REDACTED
        with zipfile.ZipFile(c) as z:  # nor anywhere else in the file (callback state, hyper-parameters)
            assert all(needle not in z.read(n) for n in z.namelist()), c

    report = tmp_path / "report.html"
    assert report_main([str(out), "--out", str(report)]) == 0
    page = report.read_text()
    # (not "DOE" alone: the base64 of an embedded image may hold any three letters; "^" and "_" it never holds)
    assert "DOE^JANE" not in page and "JANE_" not in page and "labels_csv" in page
