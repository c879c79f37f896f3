"""The probes of docs/guide/bad_inputs.md: each bad input gets one sentence naming the file or key and what to do,
or is handled correctly (16-bit images scaled by their range). The table's rows name these tests."""

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from src.domains import build_datamodule
from src.errors import ConfigError, DataError, ProjectError
from src.sample import DEFAULTS, check_options
from src.train import train

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "guide" / "bad_inputs.md"
FAST = ["experiment=smoke", "logger=none", "trainer.max_steps=1", "sampling.num=0", "trainer.accelerator=cpu"]


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose header then claims ``width x height`` (a decompression bomb's header)."""
    Image.new("L", (8, 8), 128).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8  # after the signature: length (4), b"IHDR" (4), then width and height
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 4 + 4 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13:ihdr + 8 + 13 + 4] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def _good_pngs(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"ok{i}.png")


def _image_dm(path, **kw):
    return build_datamodule({"name": "image", "path": str(path), "resolution": 16, "channels": 1,
                             "batch_size": 2, "num_workers": 0, **kw})


def test_png_header_claiming_30000_pixels_is_skipped_and_named(tmp_path, caplog):
    _png_claiming(tmp_path / "bomb.png", 30000, 30000)
    _good_pngs(tmp_path, 3)
    dm = _image_dm(tmp_path, max_bad_fraction=0.5)
    dm.setup("fit")  # the run goes on without the file
    assert len(dm.train_set) + len(dm.val_set) == 3
    assert "bomb.png" in caplog.text and "too large to decode safely" in caplog.text
    with pytest.raises(DataError, match=r"could not be read .*bomb\.png \(too large to decode safely"):
        _image_dm(tmp_path, max_bad_fraction=0.0).setup("fit")


def test_16bit_png_is_scaled_by_its_range_not_saturated(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    dm = _image_dm(tmp_path, val_fraction=0.0)
    dm.setup("fit")
    x = dm.train_set[0]["x"].numpy()
    assert x.min() == pytest.approx(-1.0, abs=0.06) and x.max() == pytest.approx(1.0, abs=0.06)  # a resized ramp
    assert np.mean(x > 0.99) < 0.1  # was 99.2% at +1 when read as 8-bit
    assert abs(float(np.median(x))) < 0.1


def test_images_smaller_than_8_pixels_are_refused(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(DataError, match=r"dot\.png \(is 1x1 pixels, smaller than the minimum of 8"):
        _image_dm(tmp_path).setup("fit")


def test_no_decodable_image_names_the_files(tmp_path):
    for i in range(2):  # headers that pass, pixel data that does not decode
        Image.fromarray(np.full((64, 64), 100, np.uint8)).save(tmp_path / f"cut{i}.png")
        data = (tmp_path / f"cut{i}.png").read_bytes()
        (tmp_path / f"cut{i}.png").write_bytes(data[:60])
    dm = _image_dm(tmp_path, val_fraction=0.0, max_bad_fraction=1.0)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"images in the dataset could be decoded, e\.g\. "
                                        r".*cut\d\.png \(image file is truncated\)"):
        dm.train_set[0]


@pytest.mark.parametrize("override,message", [
    ("datamodule.mode=slcie", "datamodule.mode must be one of volume, slice, got 'slcie'"),
    ("datamodule.resolution=-8", "datamodule.resolution must be a whole number of at least 8, got -8"),
])
def test_config_typos_and_impossible_values_name_the_key(compose_cfg, tmp_path, override, message):
    domain = ["domain=mri"] if "mode" in override else []
    with pytest.raises(ProjectError, match=re.escape(message)):
        train(compose_cfg([*domain, *FAST, f"paths.output_dir={tmp_path}", override]))


@pytest.mark.parametrize("option,message", [
    ("num_samples=0", "num_samples must be a whole number of at least 1, got 0"),
    ("steps=0", "steps must be a whole number of at least 1, got 0"),
    ("batch_size=-2", "batch_size must be a whole number of at least 1, got -2"),
])
def test_sample_options_that_would_fail_deep_or_mean_the_default(tmp_path, option, message):
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(["ckpt=x", f"out={tmp_path}", option]))
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_options(cfg)


def test_sample_out_naming_an_existing_file(tmp_path):
    (tmp_path / "taken.png").write_bytes(b"")
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(["ckpt=x", f"out={tmp_path}/taken.png"]))
    with pytest.raises(ConfigError, match="is an existing file; pass a folder"):
        check_options(cfg)


# ---- the table in docs/guide/bad_inputs.md: every row is one of the tests of the suite -----------------------
def _rows():
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`tests/"):
            rows.append(cells)
    return rows


def test_every_row_of_the_bad_input_table_is_a_test():
    rows = _rows()
    assert len(rows) >= 20, f"{TABLE} lists {len(rows)} probes"
    for probe, message, where in rows:
        file, name = where.strip("`").split("::")
        blocks = (ROOT / file).read_text().split("\n\n\n")  # a test with its decorators, as PEP 8 spaces them
        block = next((b for b in blocks if re.search(rf"^def {re.escape(name)}\(", b, re.M)), None)
        assert block, f"{where} (row '{probe}') is not a test in {file}"
        quoted = re.findall(r"`([^`]+)`", message)
        assert quoted, f"row '{probe}' quotes no message"
        body = block.replace("\\", "")
        for q in quoted:  # the expected sentence is what the test asserts
            assert q.replace("\\", "") in body, f"{where} does not check `{q}` (row '{probe}')"
