"""Malformed files, generated here, against the readers and the tools that use them (issue 28, rules 2, 5, 6).

Each tool is called in-process through its ``main(argv)``: a refusal is exit status 2 with one line naming the
file, no traceback, no output file, and no file already in the folder changed. Readers of training data skip
and count a bad file; readers of the project's own files (``src.report``) build the page and say what they left
out. The cases are the classes of docs/guide/bad_inputs.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import tarfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import h5py
import nibabel as nib
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from datamodules.labels import LabelError, csv_labels
from datamodules.shard_sources import shard_counts
from src.anomaly import main as anomaly_main
from src.domains import build_datamodule
from src.domains.mri.fft import fft2c
from src.errors import DataError
from src.fileio import read_image
from src.reconstruct import main as reconstruct_main
from src.report.__main__ import main as report_main
from src.restore import main as restore_main
from src.runtime.callbacks import KeepNewestSteps
from tests.helpers.mri import phantom, write_dicom_series, write_nifti
from tests.helpers.restore import make_checkpoint

SIZE = 16
HEADER = ("<ismrmrdHeader><encoding><encodedSpace><matrixSize><x>{mx}</x><y>{my}</y><z>1</z></matrixSize>"
          "<fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>3</z></fieldOfView_mm></encodedSpace></encoding>"
          "</ismrmrdHeader>")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(main, argv: list[str], folder: Path, capsys, bad: Path) -> str:
    """``main(argv)`` must exit 2 with one line naming ``bad``, write nothing and change nothing in ``folder``."""
    before = snapshot(folder)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert str(bad) in err, err
    assert snapshot(folder) == before  # no output file, nothing already written changed
    return err


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"image": make_checkpoint(d / "image.ckpt", "image", [1, SIZE, SIZE]),
            "audio": make_checkpoint(d / "audio.ckpt", "audio", [1, 256]),
            "slice": make_checkpoint(d / "slice.ckpt", "mri", [1, SIZE, SIZE])}


# ---- HDF5 k-space for src.reconstruct: header checked before anything is read ---------------------------
def _kspace(slices=2) -> np.ndarray:
    img = np.stack([phantom((SIZE, SIZE), seed=s) for s in range(slices)]).astype(np.float32)
    return fft2c(torch.from_numpy(img).to(torch.complex64)).numpy()


def _h5(path: Path, kspace=None, mask=None, header=None, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        if kspace is not None:
            f["kspace"] = kspace
        if mask is not None:
            f["mask"] = mask
        if header is not None:
            f["ismrmrd_header"] = header
        for k, v in datasets.items():
            f[k] = v
    return path


def _reconstruct(tmp_path, capsys, inp: Path) -> str:
    return refused(reconstruct_main, ["--method", "zero-filled", "--input", str(inp), "--output",
                                      str(tmp_path / "out.nii.gz"), "--quiet"], tmp_path, capsys, inp)


def test_hdf5_claiming_24_gib_of_kspace_is_refused_before_reading(tmp_path, capsys):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:  # chunked with nothing written: a few KB on disk, 24 GiB when read
        f.create_dataset("kspace", shape=(96, 16, 1024, 1024), dtype=np.complex64, chunks=(1, 1, 64, 64))
    assert path.stat().st_size < 100_000
    err = _reconstruct(tmp_path, capsys, path)
    assert "more than the 268,435,456 one input may hold" in err


@pytest.mark.parametrize("case,message", [
    ("bytes", "stores |S4 values; it must hold complex numbers of at most 128 bits"),
    ("complex256", "stores complex256 values; it must hold complex numbers of at most 128 bits"),
    ("zero_slices", "is empty (shape (0, 16, 16))"),
    ("nan_kspace", "holds NaN or infinite samples"),
    ("nan_mask", "holds NaN or infinite values"),
    ("half_mask", "holds values other than 0 and 1"),
    ("zero_matrix", "has an impossible matrix size"),
    ("negative_fov", "has an impossible field of view"),
    ("nan_fov", "has an impossible field of view"),
])
def test_malformed_kspace_files_are_one_sentence(tmp_path, capsys, case, message):
    k, ok_header = _kspace(), HEADER.format(mx=SIZE, my=SIZE, fx=160, fy=160)
    mask = np.ones(SIZE, np.float32)
    path = tmp_path / f"{case}.h5"
    if case == "bytes":
        _h5(path, kspace=np.array([[b"abcd"] * 4] * 4))
    elif case == "complex256":
        _h5(path, kspace=k.astype(np.complex256))
    elif case == "zero_slices":
        _h5(path, kspace=np.zeros((0, SIZE, SIZE), np.complex64))
    elif case == "nan_kspace":
        k[0, 3, 3] = np.nan
        _h5(path, kspace=k, header=ok_header)
    elif case == "nan_mask":
        mask[2] = np.nan
        _h5(path, kspace=k, mask=mask, header=ok_header)
    elif case == "half_mask":
        mask[2] = 0.5
        _h5(path, kspace=k, mask=mask, header=ok_header)
    else:
        mx, fx = {"zero_matrix": (0, 160), "negative_fov": (SIZE, -160), "nan_fov": (SIZE, "nan")}[case]
        _h5(path, kspace=k, header=HEADER.format(mx=mx, my=SIZE, fx=fx, fy=160))
    assert message in _reconstruct(tmp_path, capsys, path)


# ---- images and sound for src.restore; NIfTI for src.anomaly -----------------------------------------------
def _png_claiming(path: Path, width: int, height: int) -> Path:
    Image.new("L", (8, 8), 128).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_png_header_of_30000_pixels_in_restore_is_one_sentence(ckpts, tmp_path, capsys):
    bomb = _png_claiming(tmp_path / "bomb.png", 30000, 30000)
    err = refused(restore_main, ["--checkpoint", str(ckpts["image"]), "--task", "super-resolution", "--input",
                                 str(bomb), "--output", str(tmp_path / "out.png"), "--quiet"], tmp_path, capsys, bomb)
    assert "is too large to decode safely" in err


def test_nan_in_a_wav_is_one_sentence(ckpts, tmp_path, capsys):
    wave = np.sin(np.linspace(0, 60, 2048)).astype(np.float32)
    wave[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, 8000, subtype="FLOAT")
    err = refused(restore_main, ["--checkpoint", str(ckpts["audio"]), "--task", "declip", "--input", str(path),
                                 "--output", str(tmp_path / "out.wav"), "--quiet"], tmp_path, capsys, path)
    assert "holds NaN or infinite samples" in err


def test_nan_in_a_training_wav_is_skipped_and_named(tmp_path, caplog):
    from src.domains.audio.data import AudioDataModule

    for i in range(3):
        wave = np.sin(np.linspace(0, 40 * (i + 1), 4000)).astype(np.float32) * 0.5
        if i == 0:
            wave[1000:1100] = np.nan
        sf.write(tmp_path / f"clip{i}.wav", wave, 8000, subtype="FLOAT")
    dm = AudioDataModule(path=str(tmp_path), sample_rate=8000, clip_seconds=0.5, num_workers=0, batch_size=2,
                         val_fraction=0.0, max_bad_fraction=0.5)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        items = [dm.train_set[i]["x"] for i in range(len(dm.train_set))]
    assert all(torch.isfinite(x).all() for x in items)  # the NaN file's place is taken by a good one
    assert "clip0.wav" in caplog.text and "holds NaN or infinite samples" in caplog.text


def test_float_tiff_is_read_as_its_values_not_black(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 1))
    Image.fromarray(ramp, mode="F").save(tmp_path / "ramp.tif")
    assert Image.open(tmp_path / "ramp.tif").mode == "F"
    img = read_image(tmp_path / "ramp.tif", 1)
    assert img.shape == (1, 24, 32) and np.allclose(img[0], ramp, atol=1e-6)  # was all 0 (read as black)
    np.save(tmp_path / "x.npy", ramp)
    Image.fromarray(ramp * 255, mode="F").save(tmp_path / "ramp255.tif")  # float on an 8-bit scale
    assert np.allclose(read_image(tmp_path / "ramp255.tif", 3)[2], ramp, atol=1e-6)
    bad = ramp.copy()
    bad[0, 0] = np.inf
    Image.fromarray(bad, mode="F").save(tmp_path / "inf.tif")
    with pytest.raises(DataError, match=r"inf\.tif holds NaN or infinite pixels"):
        read_image(tmp_path / "inf.tif", 1)


def _nifti_claiming(path: Path, shape) -> Path:
    """A NIfTI file whose header claims ``shape`` but holds a few bytes of data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    return path


def test_nifti_header_claiming_a_huge_volume_in_anomaly(ckpts, tmp_path, capsys):
    path = _nifti_claiming(tmp_path / "huge.nii", (4000, 4000, 4000))
    err = refused(anomaly_main, ["--checkpoint", str(ckpts["slice"]), "--input", str(path), "--output",
                                 str(tmp_path / "map.nii.gz"), "--steps", "4", "--draws", "1"],
                  tmp_path, capsys, path)
    assert "claims 64,000,000,000 values" in err


# ---- training data: malformed DICOM series skipped and named; label CSV encodings ------------------------
def _edit_dicom(folder: Path, index: int, tag: str, value) -> None:
    import pydicom  # optional heavy dependency: pydicom
    from pydicom.dataelem import DataElement

    f = sorted(folder.glob("*.dcm"))[index]
    ds = pydicom.dcmread(f)
    vr = ds[tag].VR
    if isinstance(value, list):
        setattr(ds, tag, value)
    else:
        ds[tag] = DataElement(ds[tag].tag, "LO" if vr in ("IS", "DS") else vr, value)  # LO: any text is stored
    ds.save_as(f)


def test_malformed_dicom_series_are_skipped_and_named(tmp_path, caplog):
    from src.domains.mri.data import MRIDataModule

    for i in range(3):
        write_nifti(tmp_path / f"good{i}.nii.gz", phantom((16, 16, 16), seed=i))
    for name in ("instance", "orientation", "position"):
        write_dicom_series(tmp_path / name, phantom((16, 16, 4), seed=5))
    _edit_dicom(tmp_path / "instance", 1, "InstanceNumber", "2.5")
    _edit_dicom(tmp_path / "orientation", 0, "ImageOrientationPatient", [1.0, 0.0, 0.0])
    _edit_dicom(tmp_path / "position", 2, "ImagePositionPatient", "left\\upper\\here")
    dm = MRIDataModule(path=str(tmp_path), mode="volume", shape=(16, 16, 16), spacing=(3.0, 3.0, 3.0),
                       num_workers=0, cache_workers=1, val_fraction=0.0, max_bad_fraction=0.6)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert sum(dm.num_volumes.values()) == 3
    for name, field in [("instance", "InstanceNumber is not a whole number"),
                        ("orientation", "ImageOrientationPatient is not 6 numbers"),
                        ("position", "ImagePositionPatient is not 3 numbers")]:
        assert any(str(tmp_path / name) in r.getMessage() and field in r.getMessage() for r in caplog.records), name


def test_recon_prior_on_a_folder_of_skipped_files_says_why(tmp_path):
    _h5(tmp_path / "no_header.h5", kspace=_kspace(2))  # k-space without ismrmrd_header: pixel size unknown
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    dm = build_datamodule({"name": "mri", "grid": "acquisition", "path": str(tmp_path), "val_fraction": 0.0,
                           "batch_size": 2, "num_workers": 0, "max_bad_fraction": 1.0})
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    text = str(e.value)
    assert "Every one of the 2 files found under datamodule.path=" in text
    assert "no_header.h5" in text and "has no readable ismrmrd_header" in text and "broken.nii.gz" in text


def test_label_csv_with_a_bom_is_read_and_latin1_is_one_sentence(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("L", (8, 8)).save(tmp_path / name)
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    (tmp_path / "bom.csv").write_bytes("file,label\na.png,caf\u00e9\nb.png,tea\n".encode("utf-8-sig"))
    assert csv_labels(tmp_path / "bom.csv", files, tmp_path) == (["café", "tea"], [0, 1])
    (tmp_path / "latin.csv").write_bytes("file,label\na.png,caf\u00e9\nb.png,tea\n".encode("latin-1"))
    with pytest.raises(LabelError, match=r"latin\.csv is not UTF-8 text \(byte \d+ cannot be decoded\); save it as "
                                         r"UTF-8"):
        csv_labels(tmp_path / "latin.csv", files, tmp_path)


# ---- the project's own files: the report, the shards' summary, checkpoint rotation -----------------------
def test_report_of_a_damaged_run_folder_builds_the_page_and_says_what_it_left_out(tmp_path, capsys):
    run = tmp_path / "run $\\alpha_{x$"  # matplotlib mathtext in the name, and an unbalanced $
    (run / "samples").mkdir(parents=True)
    (run / "config.yaml").write_bytes("domain: {name: image}\nmedia: {kind: image}\nnote: caf\xe9\n".encode("latin-1"))
    lines = [{"step": s, "metrics": {"train/loss": 1.0 / (s + 1)}} for s in range(6)]
    text = "\n".join(json.dumps(r) for r in lines[:3]) + "\n{not json\n[1, 2]\n" + \
        "\n".join(json.dumps(r) for r in lines[3:]) + '\n{"event": "end", "step": 6, "metrics": {}}\n'
    (run / "metrics.jsonl").write_text(text)
    for i in range(2):
        Image.new("L", (16, 16), 60 * i).save(run / "samples" / f"step0000004_{i:05d}.png")
    cut = run / "samples" / "step0000004_00001.png"
    cut.write_bytes(cut.read_bytes()[:50])
    (run / "scan.metrics.json").write_text('{"reconstruction": {"psnr": 3')  # cut off mid-write
    out = tmp_path / "report.html"
    assert report_main([str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Left out of run $\\alpha_{x$: config.yaml (not UTF-8" in page
    assert "metrics.jsonl line 4, line 5 (not a metrics record)" in page
    assert "samples/step0000004_00001.png (OSError" in page
    assert "scan.metrics.json (not valid JSON)" in page
    assert 'class="sample-grid"' in page and "1 EMA samples" in page  # the readable sample is shown


def test_damaged_shard_summary_is_named_and_samples_are_counted(tmp_path, caplog):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for key in ("a", "b", "c"):
            data = b"{}"
            info = tarfile.TarInfo(f"{key}.json")
            info.size = len(data)
            tf.addfile(info, __import__("io").BytesIO(data))
    summary = tmp_path / "summary.json"
    for damaged in ('{"shards": {"shard-000000.tar": {"samples": "many"}}}', "[1, 2]", '{"shards": '):
        summary.write_text(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert shard_counts([str(shard)]) == [3]
        assert f"{summary} is damaged" in caplog.text


def test_checkpoint_keep_counts_step_files_left_by_killed_writes(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"step{step:07d}.ckpt").write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"x")
    (tmp_path / "stepnotes.ckpt").write_bytes(b"x")  # not a step file: left alone
    KeepNewestSteps(tmp_path, keep=2).on_fit_start(SimpleNamespace(is_global_zero=True), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step0000006.ckpt", "step0000008.ckpt",
                                                          "stepnotes.ckpt"]
    KeepNewestSteps(tmp_path, keep=-1).on_fit_start(SimpleNamespace(is_global_zero=True), None)  # -1: keep all
    assert len(list(tmp_path.iterdir())) == 4
