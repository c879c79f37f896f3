"""Latent audio: the waveform autoencoder (shapes, hop), the 1D U-Net (and its text path), both stages on the
built-in sounds with a WAV from src.sample, stage 2 with cond=text on captioned clips sampled from a prompt, the
bad inputs (clips shorter than the hop, another sample rate or domain, restoration of a latent model) and the
sampling progress lines."""

import hashlib
import io

import numpy as np
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


# sha256 of "name:shape" lines of the tiny unet1d's state_dict (8 channels, no classes, no text) before the text
# path was added: checkpoints of latent audio without text must keep loading
PLAIN_TINY_KEYS = (128, "518cdcaa7c55a9bfbfc85ae8c6858b4c3e369138b9a8410d77a9c417da39cd8c")


def unet1d(**kw):
    torch.manual_seed(0)
    return build_backbone({"name": "unet1d", "in_channels": 8, "preset": "tiny", **kw})


def test_unet1d_without_text_keeps_its_parameter_names():
    plain = unet1d().state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in plain.items())
    assert (len(plain), hashlib.sha256(lines.encode()).hexdigest()) == PLAIN_TINY_KEYS
    text = unet1d(context_dim=16).state_dict()
    assert all(text[k].shape == v.shape for k, v in plain.items())
    # the text adds a pooled projection and cross-attention after each self-attention (tiny: level 1) and mid
    added = {k.rsplit(".", 2)[0].removesuffix(".attn") for k in text if k not in plain}
    assert added == {"text_pool", "mid_cross", "down.2.2", "up.0.2", "up.1.2"}


def test_unet1d_output_depends_on_the_caption():
    net = unet1d(context_dim=16)
    cross = [m for m in net.modules() if type(m).__name__ == "CrossAttention1d"]
    assert len(cross) == 4 and all(float(m.attn.out_proj.weight.abs().sum()) == 0 for m in cross)
    with torch.no_grad():  # train-like weights everywhere except the zero-initialised cross-attention outputs
        for name, p in net.named_parameters():
            if "out_proj" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(2, 8, 19), torch.rand(2)
    a, b = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    pooled = torch.randn(2, 16)
    y = net(x, t, context=a, pooled=pooled)
    assert y.shape == x.shape
    # cross-attention starts as the identity: other tokens, same pooled embedding, same output
    assert torch.allclose(net(x, t, context=b, pooled=pooled), y)
    # the pooled embedding reaches the noise-level embedding
    assert (net(x, t, context=a, pooled=pooled + 1) - y).abs().max() > 1e-3
    with torch.no_grad():
        for m in cross:
            m.attn.out_proj.weight.normal_(std=0.05)
    y = net(x, t, context=a, pooled=pooled)
    assert (net(x, t, context=b, pooled=pooled) - y).abs().max() > 1e-3
    with pytest.raises(ValueError, match="built without text but got text"):
        unet1d()(x, t, context=a, pooled=pooled)


def test_stage2_with_captions_samples_from_a_prompt(runs, tmp_path):
    from src.sample import main

    t = np.arange(1024) / 16000
    for k, (word, freq) in enumerate([("low", 220.0), ("high", 1760.0)] * 4):
        sf.write(tmp_path / f"t{k}.wav", (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
        (tmp_path / f"t{k}.txt").write_text(f"a {word} tone")
    out = tmp_path / "ldm"
    train(compose(["domain=audio", "experiment=audio_quickstart", "logger=none", "trainer.accelerator=cpu",
                   "threads=1", "trainer.enable_progress_bar=false", f"datamodule.path={tmp_path}",
                   "datamodule.clip_seconds=0.064", "datamodule.batch_size=4", "datamodule.num_workers=0",
                   "backbone.preset=tiny", "sampling.num=2", "sampling.steps=2", "trainer.limit_val_batches=1",
                   "trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_steps=2",
                   "cond=text", "cond.dim=16", "cond.heads=2", "cond.layers=1", "cond.max_length=16",
                   f"latent.autoencoder={runs['ae']}", f"paths.output_dir={out}"]))
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["backbone"]["name"] == "unet1d"
    assert state["hyper_parameters"]["cond"]["kind"] == "text"
    assert "backbone.net.mid_cross.attn.out_proj.weight" in state["state_dict"]
    assert (out / "samples" / "prompts.txt").read_text().splitlines()[0] in ("a low tone", "a high tone")
    main([f"ckpt={ckpt}", "prompt=a low tone", "guidance=2", "num_samples=2", "steps=2", "seed=0",
          f"out={tmp_path / 's'}", "progress=off"])
    assert (tmp_path / "s" / "prompts.txt").read_text() == "a low tone\n"
    for k in range(2):
        data, rate = sf.read(tmp_path / "s" / f"sample_p000_{k:05d}.wav")
        assert rate == 16000 and data.shape == (1024,) and np.isfinite(data).all()


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


