"""Latent audio: the waveform autoencoder (shapes, hop), the 1D U-Net, both stages on the built-in sounds with a
WAV from src.sample, the bad inputs (clips shorter than the hop, another sample rate or domain, restoration of
a latent model) and the sampling progress lines."""

import io

import pytest
import soundfile as sf
import torch

from src.backbones import build_backbone
from src.checkpoint import CheckpointError
from src.errors import ConfigError
from src.latent.networks import autoencoder_kwargs, build_autoencoder, latent_shape
from src.latent.waveform import multi_resolution_stft_loss
from src.runtime.progress import Progress
from src.tools.prior import Prior
from src.train import train
from tests.conftest import compose

# 0.064 s clips at 16 kHz: 1024 samples, 16 latent frames of the tiny autoencoder's hop of 64
TINY = ["domain=audio", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
        "trainer.enable_progress_bar=false", "datamodule.clip_seconds=0.064", "datamodule.builtin_size=32",
        "datamodule.batch_size=4", "sampling.num=0", "trainer.limit_val_batches=1", "trainer.max_steps=3",
        "checkpoint.every_n_steps=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audio_latent")
    train(compose(TINY + ["stage=autoencoder", f"paths.output_dir={root / 'ae'}"]))
    ae = root / "ae" / "checkpoints" / "last.ckpt"
    train(compose(TINY + [f"latent.autoencoder={ae}", f"paths.output_dir={root / 'ldm'}"]))
    return {"root": root, "ae": ae, "ldm": root / "ldm" / "checkpoints" / "last.ckpt"}


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_waveform_autoencoder_shapes_and_hop(preset):
    arch = autoencoder_kwargs({"preset": preset, "spatial_dims": 1, "in_channels": 1})
    assert arch["kind"] == "waveform" and latent_shape(arch, [1, 2048]) == [8, 32]
    net = build_autoencoder(arch)
    x = torch.randn(2, 1, 2048) * 0.3
    recon, mu, sigma = net(x)
    assert recon.shape == x.shape and mu.shape == sigma.shape == (2, 8, 32)
    assert net.decode(mu).shape == x.shape and bool((sigma > 0).all())
    loss = multi_resolution_stft_loss(recon, x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert float(multi_resolution_stft_loss(x, x)) < 1e-4


def test_hop_and_clip_length_are_checked():
    with pytest.raises(ConfigError, match="at least 64"):
        autoencoder_kwargs({"spatial_dims": 1, "channels": [8, 8], "strides": [4, 4]})
    arch = autoencoder_kwargs({"preset": "tiny", "spatial_dims": 1})
    with pytest.raises(ConfigError, match="shorter than the waveform autoencoder's hop of 64 samples"):
        latent_shape(arch, [1, 32])
    with pytest.raises(ConfigError, match="not a whole number of the waveform autoencoder's hop"):
        latent_shape(arch, [1, 1000])


@pytest.mark.parametrize("length", [16, 37])
def test_unet1d_takes_any_length_and_labels(length):
    net = build_backbone({"name": "unet1d", "in_channels": 8, "preset": "tiny", "num_classes": 3})
    x = torch.randn(2, 8, length)
    y = net(x, torch.rand(2), label=torch.tensor([0, 3]))
    assert y.shape == x.shape


def test_clips_shorter_than_the_hop_stop_stage_1(tmp_path):
    with pytest.raises(ConfigError, match="shorter than the waveform autoencoder's hop"):
        train(compose(TINY + ["stage=autoencoder", "datamodule.clip_seconds=0.002",
                              f"paths.output_dir={tmp_path / 'ae'}"]))


def test_stage2_samples_wav_with_progress_lines(runs, tmp_path, capsys):
    from src.sample import main

    hp = torch.load(runs["ldm"], map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["backbone"]["name"] == "unet1d" and hp["latent"]["source"]["sample_rate"] == 16000
    main([f"ckpt={runs['ldm']}", "num_samples=3", "batch_size=2", "steps=3", "seed=0", f"out={tmp_path / 's'}",
          "progress=lines", "progress_every=0"])
    wavs = sorted((tmp_path / "s").glob("*.wav"))
    assert len(wavs) == 3
    data, rate = sf.read(wavs[0])
    assert rate == 16000 and data.shape == (1024,)
    err = capsys.readouterr().err
    assert "sampling 3 samples: 6/6 steps (100%)" in err and "ETA" in err
    main([f"ckpt={runs['ldm']}", "num_samples=1", "steps=2", "seed=0", f"out={tmp_path / 'q'}", "progress=off"])
    assert "steps (" not in capsys.readouterr().err  # YAML reads off as false: still off


def test_stage2_refuses_another_sample_rate_or_domain(runs, tmp_path):
    with pytest.raises(ConfigError, match="was trained at 16000 Hz and this run's datamodule.sample_rate is 8000"):
        train(compose(TINY + [f"latent.autoencoder={runs['ae']}", "datamodule.sample_rate=8000",
                              f"paths.output_dir={tmp_path / 'a'}"]))
    with pytest.raises(ConfigError, match="was trained on audio data and this run is domain=image"):
        train(compose(["domain=image", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
                       "datamodule.resolution=16", "datamodule.builtin_size=16", f"latent.autoencoder={runs['ae']}",
                       f"paths.output_dir={tmp_path / 'b'}"]))


def test_restoration_refuses_a_latent_audio_checkpoint(runs):
    with pytest.raises(CheckpointError, match="trained without latent.autoencoder"):
        Prior.from_checkpoint(runs["ldm"], ("image", "audio"), "restoration", "cpu")


def test_progress_modes():
    out = io.StringIO()
    p = Progress(4, desc="draw", mode="lines", every=0, stream=out)
    for _ in range(4):
        p.update()
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("draw: 4/4 steps (100%)")
    quiet = io.StringIO()
    p = Progress(4, mode="auto", every=3600, stream=quiet)  # not a terminal: lines, here only the last one
    p.update(4)
    p.close()
    assert quiet.getvalue().count("\n") == 1
    off = io.StringIO()
    p = Progress(4, mode="off", stream=off)
    p.update(4)
    p.close()
    assert off.getvalue() == ""


def test_bad_progress_option(tmp_path):
    from src.sample import main

    with pytest.raises(SystemExit, match="progress must be one of auto, bar, lines, off"):
        main([f"ckpt={tmp_path / 'x.ckpt'}", f"out={tmp_path}", "progress=loud"])


