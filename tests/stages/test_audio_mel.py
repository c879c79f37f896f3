"""Latent audio on fixed log-mel spectrograms (``latent.autoencoder=mel``): the MelCodec keeps a tone's spectrum
and decodes deterministically; stage 2 with cond=class on two folders of tones, sampled to WAVs from the
checkpoint alone; the refusal outside domain=audio."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from src.errors import ConfigError
from src.latent.mel import MelCodec
from src.latent.networks import build_autoencoder, latent_shape
from src.latent.stage import module_from_checkpoint
from src.train import train
from tests.conftest import compose

RATE, LENGTH = 16000, 4096


def tone(freq: float, length: int = LENGTH, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float32) / RATE
    return (amp * torch.sin(2 * math.pi * freq * t)).reshape(1, 1, -1)


def test_mel_codec_keeps_a_tone_and_decodes_deterministically():
    arch = {"kind": "mel", "n_mels": 64, "hop": 128, "sample_rate": RATE, "length": LENGTH}
    codec = build_autoencoder(arch)
    assert isinstance(codec, MelCodec) and not list(codec.parameters())
    assert latent_shape(arch, [1, LENGTH]) == [64, LENGTH // 128 + 1]
    x = torch.cat([tone(440.0), tone(1000.0, amp=0.2)])
    z, sigma = codec.encode(x)
    assert z.shape == (2, 64, 33) and torch.equal(sigma, torch.zeros_like(z))
    assert -1.7 < float(z.min()) and float(z.max()) < 2.5  # the fixed affine: roughly [-1, 1]
    y = codec.decode(z)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.equal(codec.decode(z), y)  # the Griffin-Lim phases come from a fixed seed
    for clip, freq in zip(y[:, 0], (440.0, 1000.0)):
        peak = float(torch.fft.rfft(clip).abs().argmax()) * RATE / LENGTH
        assert abs(peak - freq) <= 3 * RATE / LENGTH  # within 12 Hz; the mel bands near 440 Hz are ~50 Hz wide
    # the decoded clip's mel spectrogram is close to the input's (Griffin-Lim keeps magnitudes, not phases): the
    # loud bands (within 4 nats of the peak) closely, the whole spectrogram by relative error of the magnitudes
    again, _ = codec.encode(y)
    loud = z > z.amax(dim=(1, 2), keepdim=True) - 1
    assert float((again - z)[loud].abs().mean()) < 0.1

    def rel(a, b):
        return float((a.mul(4).exp() - b.mul(4).exp()).norm() / b.mul(4).exp().norm())

    assert rel(again[0], z[0]) < 0.25 and rel(again[1], z[1]) < 0.25
    assert rel(again[0], z[1]) > 1 and rel(again[1], z[0]) > 1  # and far from the other tone's


def test_the_image_layout_is_a_spectrogram_image_with_whole_frames():
    seq = build_autoencoder({"kind": "mel", "n_mels": 64, "hop": 128, "sample_rate": RATE, "length": LENGTH})
    img = build_autoencoder({"kind": "mel", "n_mels": 64, "hop": 128, "sample_rate": RATE, "length": LENGTH,
                             "layout": "image"})
    assert latent_shape({"kind": "mel", "n_mels": 64, "hop": 128, "layout": "image"}, [1, LENGTH]) == [1, 64, 32]
    x = torch.cat([tone(440.0), tone(1000.0, amp=0.2)])
    z_seq, _ = seq.encode(x)
    z_img, _ = img.encode(x)
    # the same spectrogram: bands become rows, the last centred frame (past the clip's end) is dropped
    assert z_img.shape == (2, 1, 64, 32) and torch.equal(z_img[:, 0], z_seq[..., :32])
    y = img.decode(z_img)
    assert y.shape == x.shape and torch.isfinite(y).all()
    for clip, freq in zip(y[:, 0], (440.0, 1000.0)):
        peak = float(torch.fft.rfft(clip).abs().argmax()) * RATE / LENGTH
        assert abs(peak - freq) <= 3 * RATE / LENGTH
    with pytest.raises(ValueError, match="layout"):
        MelCodec(RATE, layout="waterfall")


def test_short_clips_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="too short for mel frames of 512 samples"):
        latent_shape({"kind": "mel", "n_mels": 64, "hop": 128}, [1, 256])
    latent_shape({"kind": "mel", "n_mels": 64, "hop": 128}, [1, 257])  # two hops and one sample: enough
    with pytest.raises(ConfigError, match=r"The clips hold 160 samples \(datamodule.clip_seconds"):
        train(compose(["domain=audio", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
                       "datamodule.clip_seconds=0.01", "datamodule.builtin_size=8", "latent.autoencoder=mel",
                       f"paths.output_dir={tmp_path / 'a'}"]))


def two_tone_classes(root):
    t = np.arange(1024) / RATE
    for name, freq in (("high", 1760.0), ("low", 220.0)):
        (root / name).mkdir(parents=True)
        for k in range(4):
            clip = 0.5 * np.sin(2 * np.pi * freq * t + k)
            sf.write(root / name / f"{k}.wav", clip.astype(np.float32), RATE)


def train_preset(data, out, *extra: str):
    """Two steps of experiment=audio_quickstart on 64 ms clips (``extra``: the representation and conditioning)."""
    train(compose(["domain=audio", "experiment=audio_quickstart", "logger=none", "trainer.accelerator=cpu",
                   "threads=1", "trainer.enable_progress_bar=false", f"datamodule.path={data}",
                   "datamodule.clip_seconds=0.064", "datamodule.batch_size=4", "datamodule.num_workers=0",
                   "sampling.num=0", "trainer.limit_val_batches=1", "trainer.max_steps=2",
                   "trainer.val_check_interval=2", "checkpoint.every_n_steps=2", *extra, f"paths.output_dir={out}"]))
    return out / "checkpoints" / "last.ckpt"


def test_stage2_on_mel_spectrograms_with_classes_samples_wavs(tmp_path):
    from src.sample import main

    two_tone_classes(tmp_path / "data")
    ckpt = train_preset(tmp_path / "data", tmp_path / "ldm", "backbone.preset=tiny", "cond=class",
                        "latent.autoencoder=mel", "latent.mel.n_mels=32", "latent.mel.hop=64",
                        "latent.mel.layout=sequence")
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["latent"]["arch"] == {"kind": "mel", "n_mels": 32, "hop": 64, "sample_rate": RATE, "in_channels": 1,
                                    "length": 1024}
    assert hp["backbone"]["name"] == "unet1d" and hp["backbone"]["in_channels"] == 32
    module, _ = module_from_checkpoint(ckpt)
    assert module.data_shape == [32, 1024 // 64 + 1] and float(module.latent.scale_factor) > 0
    # the label reaches the mel-space backbone: same seed, other class, other waveform
    a, b = (module.sample(1, steps=2, seed=0, label=torch.tensor([c]), guidance=2.0) for c in (0, 1))
    assert a.shape == (1, 1, 1024) and not torch.allclose(a, b)
    main([f"ckpt={ckpt}", "label=1", "guidance=2", "num_samples=2", "steps=2", "seed=0", f"out={tmp_path / 's'}",
          "progress=off"])
    wavs = sorted((tmp_path / "s").glob("*.wav"))
    assert len(wavs) == 2
    for wav in wavs:
        data, rate = sf.read(wav)
        assert rate == RATE and data.shape == (1024,) and np.isfinite(data).all() and np.abs(data).max() > 0


def test_stage2_on_mel_images_uses_the_2d_unet_and_samples_wavs(tmp_path):
    two_tone_classes(tmp_path / "data")
    ckpt = train_preset(tmp_path / "data", tmp_path / "ldm", "backbone.preset=tiny", "cond=class",
                        "latent.autoencoder=mel", "latent.mel.n_mels=16", "latent.mel.hop=64",
                        "latent.mel.layout=image", "latent.mel.preset=tiny")
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["latent"]["arch"]["layout"] == "image"
    assert hp["backbone"]["name"] == "unet" and hp["backbone"]["spatial_dims"] == 2
    assert hp["backbone"]["in_channels"] == 1 and hp["backbone"]["preset"] == "tiny"
    module, _ = module_from_checkpoint(ckpt)
    assert module.data_shape == [1, 16, 1024 // 64]
    a, b = (module.sample(1, steps=2, seed=0, label=torch.tensor([c]), guidance=2.0) for c in (0, 1))
    assert a.shape == (1, 1, 1024) and torch.isfinite(a).all() and not torch.allclose(a, b)


def test_mel_images_with_captions_sample_from_a_prompt(tmp_path):
    from src.sample import main

    t = np.arange(1024) / RATE
    for k, (word, freq) in enumerate([("low", 220.0), ("high", 1760.0)] * 4):
        sf.write(tmp_path / f"t{k}.wav", (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)
        (tmp_path / f"t{k}.txt").write_text(f"a {word} tone")
    # the preset's own representation (mel images) with captions
    ckpt = train_preset(tmp_path, tmp_path / "ldm", "latent.mel.n_mels=16", "latent.mel.hop=64",
                        "latent.mel.preset=tiny", "cond=text", "cond.dim=16", "cond.heads=2", "cond.layers=1",
                        "cond.max_length=16")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    assert hp["latent"]["arch"]["layout"] == "image" and hp["backbone"]["name"] == "unet"  # the preset's default
    assert hp["cond"]["kind"] == "text"
    assert any(".attn2.to_k." in k for k in state["state_dict"])  # cross-attention to the caption tokens
    main([f"ckpt={ckpt}", "prompt=a low tone", "guidance=2", "num_samples=2", "steps=2", "seed=0",
          f"out={tmp_path / 's'}", "progress=off"])
    assert (tmp_path / "s" / "prompts.txt").read_text() == "a low tone\n"
    for k in range(2):
        data, rate = sf.read(tmp_path / "s" / f"sample_p000_{k:05d}.wav")
        assert rate == RATE and data.shape == (1024,) and np.isfinite(data).all()


def test_mel_images_that_do_not_fit_the_unet_name_the_clip_length(tmp_path):
    # 1.0 s at 16 kHz and hop 256: 62 frames, not a multiple of the compact U-Net's 8
    with pytest.raises(ConfigError, match=r"the data shape is \[64, 62\]: set datamodule.clip_seconds so that its "
                                          r"samples / latent.mel.hop=256 is a multiple of 8"):
        train(compose(["domain=audio", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
                       "datamodule.builtin_size=8", "datamodule.clip_seconds=1.0", "latent.autoencoder=mel",
                       "latent.mel.layout=image", "latent.mel.hop=256", f"paths.output_dir={tmp_path / 'd'}"]))
    assert not list((tmp_path / "d").rglob("*.ckpt"))  # refused before any step


def test_the_audio_preset_is_mel_images_and_keeps_the_autoencoder_route():
    stage2 = OmegaConf.to_container(compose(["domain=audio", "experiment=audio_quickstart"]), resolve=True)
    assert stage2["latent"]["autoencoder"] == "mel" and stage2["trainer"]["max_steps"] == 1600
    assert stage2["latent"]["mel"] == {"n_mels": 64, "hop": 256, "layout": "image", "preset": "compact"}
    assert stage2["datamodule"]["clip_seconds"] * stage2["datamodule"]["sample_rate"] // 256 == 64  # frames
    stage1 = OmegaConf.to_container(compose(["domain=audio", "experiment=audio_quickstart", "stage=autoencoder"]),
                                    resolve=True)
    assert stage1["latent"]["autoencoder"] is None and stage1["trainer"]["max_steps"] == 400
    route = OmegaConf.to_container(compose(["domain=audio", "experiment=audio_quickstart",
                                            "latent.autoencoder=ae/last.ckpt"]), resolve=True)
    assert route["latent"]["autoencoder"] == "ae/last.ckpt"


def test_an_unknown_mel_layout_or_preset_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="latent.mel.layout=waterfall is not a layout"):
        train(compose(["domain=audio", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
                       "datamodule.builtin_size=8", "latent.autoencoder=mel", "latent.mel.layout=waterfall",
                       f"paths.output_dir={tmp_path / 'c'}"]))
    with pytest.raises(ConfigError, match="Unknown latent.mel.preset 'huge'"):
        train(compose(["domain=audio", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
                       "datamodule.builtin_size=8", "latent.autoencoder=mel", "latent.mel.layout=image",
                       "latent.mel.preset=huge", f"paths.output_dir={tmp_path / 'e'}"]))


def test_mel_is_refused_outside_audio(tmp_path):
    with pytest.raises(ConfigError, match="mel spectrograms of audio clips and this run is domain=image"):
        train(compose(["domain=image", "experiment=smoke", "logger=none", "trainer.accelerator=cpu", "threads=1",
                       "datamodule.resolution=16", "datamodule.builtin_size=16", "latent.autoencoder=mel",
                       f"paths.output_dir={tmp_path / 'b'}"]))
