"""Audio datamodule: reading, resampling, cropping, padding, normalisation, bad files, built-in sounds."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from datamodules.base import ReproducibleItems
from src.domains import build_datamodule
from src.domains.audio.data import AudioDataModule, normalize
from src.domains.audio.synth import KINDS, render
from src.errors import DataError


def sine(freq, seconds, sr, channels=1, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def dominant_freq(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x.reshape(-1) * torch.hann_window(x.shape[-1]))
    return float(spec.abs().argmax()) * sr / x.shape[-1]


def make_dm(path, **kw):
    cfg = dict(name="audio", path=str(path), sample_rate=16000, clip_seconds=0.25, channels=1,
               normalize="none", val_fraction=0.0, max_bad_fraction=0.0, batch_size=2, num_workers=0)
    cfg.update(kw)
    dm = build_datamodule(cfg)
    dm.setup()
    return dm


@pytest.mark.parametrize("file_rate", [8000, 44100])
def test_files_at_other_rates_are_resampled(tmp_path, file_rate):
    sf.write(tmp_path / "a.wav", sine(440, 0.5, file_rate), file_rate)
    dm = make_dm(tmp_path)
    x = dm.train_set[0]["x"]
    assert x.shape == (1, 4000) and dm.data_shape == [1, 4000]
    # read at the wrong rate, a 440 Hz tone would appear at 440 * file_rate / 16000 Hz
    assert abs(dominant_freq(x, 16000) - 440) < 10


def test_resampling_matches_resampling_the_whole_file(tmp_path):
    for name in "ab":
        sf.write(tmp_path / f"{name}.wav", sine(300, 1.0, 22050), 22050)
    x = make_dm(tmp_path, val_fraction=0.5).val_set[0]["x"]
    whole = torchaudio.functional.resample(torch.from_numpy(sine(300, 1.0, 22050))[None], 22050, 16000)
    centre = (16000 - 4000) // 2
    # the crop is the centre of the whole resampled file (to a sample), with no edge artefacts
    errors = [float((x - whole[:, s:s + 4000]).abs().max()) for s in range(centre - 2, centre + 3)]
    assert min(errors) < 2e-3


def test_validation_crops_are_centred_and_training_crops_random(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 12000, dtype=np.float32)  # each sample value names its position
    for name in "ab":
        sf.write(tmp_path / f"{name}.wav", ramp, 16000, subtype="FLOAT")
    dm = make_dm(tmp_path, val_fraction=0.5)
    val = dm.val_set[0]["x"][0]
    assert torch.allclose(val, torch.from_numpy(ramp[4000:8000]))
    assert torch.equal(val, dm.val_set[0]["x"][0])
    items = ReproducibleItems(dm.train_set, seed=0)
    starts = set()
    for key in range(6):
        x = items[key]["x"][0].numpy()
        start = int(np.argmin(np.abs(ramp - x[0])))
        np.testing.assert_allclose(x, ramp[start:start + 4000])  # a contiguous crop
        starts.add(start)
        assert torch.equal(items[key]["x"], items[key]["x"])  # reproducible per draw
    assert len(starts) > 1


def test_short_files_are_padded_and_counted(tmp_path):
    sf.write(tmp_path / "short.wav", sine(440, 0.1, 16000), 16000)
    sf.write(tmp_path / "long.flac", sine(440, 0.5, 16000), 16000)
    dm = make_dm(tmp_path)
    assert dm.num_padded == 1
    short = next(dm.train_set[i]["x"] for i in range(2) if dm.train_set.files[i].path.name == "short.wav")
    assert short.shape == (1, 4000)
    assert short[:, :1600].abs().max() > 0.4 and short[:, 1600:].abs().max() == 0


def test_mono_and_stereo_by_config(tmp_path):
    left, right = sine(440, 0.3, 16000), sine(440, 0.3, 16000, amp=0.1)
    sf.write(tmp_path / "st.ogg", np.stack([left, right], 1), 16000)
    torch.manual_seed(0)
    mono = make_dm(tmp_path).train_set[0]["x"]
    torch.manual_seed(0)  # the same random crop
    stereo = make_dm(tmp_path, channels=2).train_set[0]["x"]
    assert mono.shape == (1, 4000) and stereo.shape == (2, 4000)
    assert stereo[0].abs().max() > 4 * stereo[1].abs().max()
    assert torch.allclose(mono[0], stereo.mean(0), atol=1e-6)
    (tmp_path / "st.ogg").unlink()
    sf.write(tmp_path / "m.wav", left, 16000)
    dup = make_dm(tmp_path, channels=2).train_set[0]["x"]
    assert torch.equal(dup[0], dup[1])


def test_peak_and_loudness_normalisation():
    x = torch.from_numpy(sine(440, 1.0, 16000, amp=0.05))[None]
    peak = normalize(x, "peak", 16000, peak_level=0.9)
    assert abs(float(peak.abs().max()) - 0.9) < 1e-5
    loud = normalize(x, "loudness", 16000, target_lufs=-23.0)
    assert abs(float(torchaudio.functional.loudness(loud, 16000)) + 23.0) < 0.1
    very_loud = normalize(x, "loudness", 16000, target_lufs=0.0)  # would clip: scaled down to peak 1
    assert abs(float(very_loud.abs().max()) - 1.0) < 1e-5
    silence = torch.zeros(1, 1000)
    assert torch.equal(normalize(silence, "peak", 16000), silence)


def write_bad_files(root):
    sf.write(root / "truncated.flac", sine(440, 1.0, 16000), 16000)
    data = (root / "truncated.flac").read_bytes()
    (root / "truncated.flac").write_bytes(data[: len(data) // 3])
    (root / "zero.wav").write_bytes(b"")
    sf.write(root / "empty.wav", np.zeros(0, np.float32), 16000)
    (root / "notes.wav").write_text("not audio")
    (root / "song.mp3").write_bytes(b"ID3 fake")
    (root / "._good0.wav").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource fork: ignored, not counted


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
    for i in range(5):
        sf.write(tmp_path / f"good{i}.wav", sine(200 + 100 * i, 0.3, 16000), 16000)
    write_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm = make_dm(tmp_path, max_bad_fraction=0.6, val_fraction=0.2)
    assert dm.num_bad == 5
    assert len(dm.train_set) + len(dm.val_set) == 5
    text = caplog.text
    for name in ("truncated.flac", "zero.wav", "empty.wav", "notes.wav", "song.mp3"):
        assert name in text
    assert "unsupported format .mp3" in text and "zero-length" in text
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["x"].shape == (2, 1, 4000) and torch.isfinite(batch["x"]).all()


def test_too_many_bad_files_is_one_clear_error(tmp_path):
    sf.write(tmp_path / "good.wav", sine(440, 0.3, 16000), 16000)
    write_bad_files(tmp_path)
    with pytest.raises(DataError, match=r"5 of 6 audio files could not be read.*max_bad_fraction"):
        make_dm(tmp_path, max_bad_fraction=0.1)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make_dm(tmp_path / "nope")
    with pytest.raises(DataError, match="No audio files"):
        make_dm(tmp_path)


def test_file_that_breaks_after_the_scan_is_skipped(tmp_path, caplog):
    for name, freq in (("a", 300), ("b", 600), ("c", 1200)):
        sf.write(tmp_path / f"{name}.wav", sine(freq, 0.3, 16000), 16000)
    dm = make_dm(tmp_path, val_fraction=0.3)
    broken, stand_in = dm.train_set.files[0].path, dm.train_set.files[1].path
    broken.write_text("overwritten")
    with caplog.at_level(logging.WARNING):
        x = dm.train_set[0]["x"]
    assert str(broken) in caplog.text
    assert abs(dominant_freq(x, 16000) - {"a": 300, "b": 600, "c": 1200}[stand_in.stem]) < 10


def test_builtin_sounds_are_deterministic_and_varied():
    kinds = {render(i, 4000, 16000)[1] for i in range(40)}
    assert kinds == set(KINDS)
    a, b = render(7, 4000, 16000)[0], render(7, 4000, 16000)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, render(8, 4000, 16000)[0])
    dm = AudioDataModule(sample_rate=16000, clip_seconds=0.25, builtin_size=32, val_fraction=0.25,
                         batch_size=4, num_workers=0, channels=2)
    dm.setup()
    x = torch.stack([dm.train_set[i]["x"] for i in range(8)])
    assert x.shape == (8, 2, 4000) and torch.isfinite(x).all()
    assert torch.allclose(x.abs().amax((1, 2)), torch.full((8,), 0.95), atol=1e-4)  # peak-normalised
    assert len(dm.val_set) == 8 and torch.equal(dm.val_set[0]["x"], dm.val_set[0]["x"])


def test_mel_conditioning_adds_cond(tmp_path):
    dm = AudioDataModule(sample_rate=16000, clip_seconds=0.25, builtin_size=8, batch_size=4, num_workers=0,
                         mel_conditioning=True, n_mels=40, hop_length=256)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 1, 4000)
    assert batch["cond"].shape == (4, 40, 4000 // 256 + 1) and torch.isfinite(batch["cond"]).all()


def test_bad_options_are_data_errors():
    with pytest.raises(DataError, match="channels"):
        AudioDataModule(channels=3)
    with pytest.raises(DataError, match="normalize"):
        AudioDataModule(normalize="rms")
