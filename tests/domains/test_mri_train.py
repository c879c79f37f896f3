"""End to end: `src.train domain=mri experiment=smoke` in both modes, `src.sample`, and patient privacy (the
privacy run as a real `python -m src.train` process: its command line names the patient's files)."""

import os
import socket
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.helpers.background import Background, selected
from tests.helpers.mri import FAKE_DATE, FAKE_PATIENT_ID, phantom, write_dicom_series, write_nifti

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("mode,shape", [("volume", (32, 32, 32)), ("slice", (64, 64))])
def test_smoke_trains_and_samples_nifti(compose_cfg, tmp_path, mode, shape):
    # training in this process (`python -m src.train` calls the same train(); the CLI's own contract is tested in
    # tests/cli): the smoke experiment's sizes (the mode's default shape), fewer built-in phantoms, steps and
    # samples: the checks below need a trained checkpoint, a validation and end-of-training samples
    from src.train import train

    out = tmp_path / "run"
    train(compose_cfg([
        "domain=mri",
        "experiment=smoke",
        "logger=none",
        f"datamodule.mode={mode}",
        f"paths.output_dir={out}",
        "trainer.enable_progress_bar=false",
        "datamodule.builtin_size=8",
        "datamodule.batch_size=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "checkpoint.every_n_steps=2",
        "sampling.every_n_steps=2",
        "sampling.num=2",
        "sampling.steps=2",
        "metrics.num_samples=2",
        "optim.warmup_steps=1",
    ]))
    assert (out / "checkpoints" / "last.ckpt").exists()
    written = sorted((out / "samples").glob("*.nii.gz"))
    assert len(written) == 2  # sampling.num at the last step
    assert nib.load(written[0]).shape == shape

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    dm = ckpt["run_config"]["datamodule"]
    # what a reconstruction tool checks before using the model as a prior
    assert (dm["mode"], dm["shape"], dm["channels"]) == (mode, list(shape), 1)
    assert dm["intensity_scaling"] == "zero_anchored_percentile" and dm["intensity_percentile"] == 99.5

    # the sampling CLI in this process (`python -m src.sample` runs the same main): one interpreter start-up less
    from src.sample import main as sample_main

    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=2", "steps=4",
                 f"out={tmp_path / 'sampled'}"])
    sampled = sorted((tmp_path / "sampled").glob("*.nii.gz"))
    assert len(sampled) == 2
    img = nib.load(sampled[0])
    assert img.shape == shape
    spacing = [6.0] * 3 if mode == "volume" else [3.0, 3.0]
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[: len(shape)]), spacing)
    data = img.get_fdata()
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1


@pytest.fixture(scope="module", autouse=True)
def patient_run(request, tmp_path_factory):
    """A real ``python -m src.train`` run on patient files (its command line names them, as a user's would),
    started when the module begins so the in-process tests run meanwhile; its folder is named after the patient."""
    if not selected(request, "test_nothing_from_the_patient_reaches_wandb"):
        yield None
        return
    base = tmp_path_factory.mktemp("patient")
    data = base / "private_cohort"
    for i in range(2):
        write_dicom_series(data / f"dicom{i}", phantom((24, 24, 12), seed=i), spacing=(4.0, 4.0, 4.0))
    for i in range(2):
        write_nifti(
            data / f"janet_doe_{FAKE_DATE}_{i}.nii.gz",
            phantom((24, 24, 24), seed=10 + i),
            spacing=(4.0, 4.0, 4.0),
        )
    (data / "janet_doe_broken.nii.gz").write_bytes(b"broken")  # its warning names the file
    out = base / "run_janet_doe"  # a folder named after the patient
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with Background(timeout=600) as started:
        started.start("train", [
            sys.executable, "-m", "src.train",
            "domain=mri",
            "experiment=smoke",
            f"datamodule.path={data}",
            "datamodule.shards.val_path=/archive/private_cohort/val-000000.tar",
            f"datamodule.cache_dir={base / 'cache_janet_doe'}",
            "datamodule.shape=[16,16,16]",
            "datamodule.max_bad_fraction=0.5",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "sampling.every_n_steps=2",
            "sampling.num=2",
            "sampling.steps=2",
            "checkpoint.every_n_steps=2",
            "metrics.num_samples=2",
            "trainer.enable_progress_bar=false",
            f"paths.output_dir={out}",
        ], env, ROOT)
        yield started, out


PATIENT_STRINGS = ["Doe^Janet", "Janet", "janet_doe", FAKE_PATIENT_ID, FAKE_DATE, "private_cohort"]


def test_reconstruction_outputs_carry_no_input_path_or_header_text(tmp_path):
    # the reconstruction CLI in this process (`python -m src.reconstruct` runs the same main; nothing it writes
    # depends on the process's own command line)
    from src.reconstruct import main as reconstruct_main

    src = tmp_path / "private_cohort" / "janet_doe_t1.nii.gz"
    img = nib.Nifti1Image(phantom((32, 32, 4)).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    img.header["descrip"] = b"Doe^Janet scanned 1957"
    src.parent.mkdir()
    nib.save(img, src)
    out = tmp_path / "recon.nii.gz"
    reconstruct_main(["--input", str(src), "--simulate", "--method", "zero-filled", "--output", str(out),
                      "--reference", str(src), "--quiet"])
    written = [out, tmp_path / "recon.metrics.json"]
    assert all(p.exists() for p in written)
    for p in written:
        blob = nib.load(p).header.structarr.tobytes() if p.suffix == ".gz" else p.read_bytes()
        for s in [*PATIENT_STRINGS, "1957"]:
            assert s.encode() not in blob, f"{s!r} found in {p}"


@pytest.mark.slow
def test_nothing_from_the_patient_reaches_wandb(patient_run):
    started, out = patient_run
    proc = started.result("train")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the local log does name the bad file (so the check below is not vacuous) ...
    assert "janet_doe_broken" in (out / "train.log").read_text()
    # ... but nothing in the W&B run folder (what `wandb sync` uploads) carries a patient string or the path
    wandb_files = [p for p in (out / "wandb").rglob("*") if p.is_file()]
    blobs = b"".join(p.read_bytes() for p in wandb_files)
    # the run config was logged, with the path redacted
    assert b"intensity_percentile" in blobs and b"not recorded: privacy" in blobs
    for p in wandb_files:
        blob = p.read_bytes()
        for s in PATIENT_STRINGS:
            assert s.encode() not in blob, f"{s!r} found in {p}"
    samples = list((out / "samples").iterdir())
    assert samples  # the sample files exist, so the name check below is not vacuous
    for p in samples:
        assert not any(s.lower() in p.name.lower() for s in PATIENT_STRINGS)
    run_config = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["run_config"]
    assert "private_cohort" not in repr(run_config)
    # decision (docs/design/mri.md): the local config.yaml keeps datamodule.path; it does not leave the machine
    assert "private_cohort" in (out / "config.yaml").read_text()
    # every file the run wrote, but for the local record (config.yaml, .hydra/, train.log), is free of
    # patient strings and of this machine's name
    local = {out / "config.yaml", out / "train.log"}
    shared = [p for p in out.rglob("*") if p.is_file() and p not in local and ".hydra" not in p.parts]
    assert any(p.suffix == ".ckpt" for p in shared) and any(p.suffix == ".wandb" for p in shared)
    for p in shared:
        blob = p.read_bytes()
        host = socket.gethostname()  # a short name ("vm") matches random bytes: only a distinctive one counts
        for s in [*PATIENT_STRINGS, *([host] if len(host) >= 6 else [])]:
            assert s.encode() not in blob, f"{s!r} found in {p}"
