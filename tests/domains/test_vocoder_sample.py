"""`python -m src.sample ... mel_from=FILE.wav`: a vocoder checkpoint resynthesises a whole file."""

import numpy as np
import pytest
import soundfile as sf

from src.domains.audio.sampling import sample_input
from src.sample import main as sample_main
from src.train import train


@pytest.fixture(scope="module")
def vocoder_ckpt(tmp_path_factory):
    from tests.conftest import compose

    out = tmp_path_factory.mktemp("vocoder")
    cfg = compose(["domain=audio", "experiment=smoke", "logger=none", f"paths.output_dir={out}",
                   "datamodule.mel_conditioning=true", "datamodule.n_mels=16", "backbone.preset=tiny",
                   "trainer.max_steps=2", "trainer.val_check_interval=2", "sampling.num=0",
                   "checkpoint.every_n_steps=2", "datamodule.builtin_size=32", "trainer.accelerator=cpu",
                   "metrics.num_samples=0"])
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


def _tone(path, rate, seconds, freq, channels=2):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([wave] * channels, 1).astype(np.float32), rate)


def test_mel_from_resynthesises_the_whole_file_at_the_training_rate(vocoder_ckpt, tmp_path):
    _tone(tmp_path / "a.wav", 22050, 0.3, 440)  # stereo, another rate: mixed to mono, resampled to 16 kHz
    _tone(tmp_path / "b.wav", 22050, 0.3, 3000)
    outs = {}
    for name in ("a", "b"):
        sample_main([f"ckpt={vocoder_ckpt}", "num_samples=2", "steps=3", "device=cpu", "seed=0",
                     f"mel_from={tmp_path / (name + '.wav')}", f"out={tmp_path / name}"])
        files = sorted((tmp_path / name).glob("*.wav"))
        assert len(files) == 2
        data, rate = sf.read(files[0], dtype="float32")
        assert rate == 16000 and data.shape[0] == 4800 and np.isfinite(data).all()
        outs[name] = data
    # same seed and noise, different mel: the condition reaches the network
    assert np.abs(outs["a"] - outs["b"]).max() > 1e-4


def test_mel_from_errors_name_the_file_or_the_checkpoint(vocoder_ckpt, tmp_path):
    with pytest.raises(SystemExit, match="mel_from=.*missing.wav does not exist"):
        sample_main([f"ckpt={vocoder_ckpt}", "device=cpu", f"mel_from={tmp_path / 'missing.wav'}",
                     f"out={tmp_path}"])
    (tmp_path / "noise.wav").write_bytes(b"not audio")
    with pytest.raises(SystemExit, match="could not be read as audio"):
        sample_main([f"ckpt={vocoder_ckpt}", "device=cpu", f"mel_from={tmp_path / 'noise.wav'}",
                     f"out={tmp_path}"])
    with pytest.raises(ValueError, match="mel_conditioning=true; plain.ckpt was not"):
        sample_input({"mel_from": str(tmp_path / "noise.wav")}, {"datamodule": {"mel_conditioning": False}}, 1,
                     "cpu", "plain.ckpt")
