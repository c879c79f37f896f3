"""Audio backbone (DiffWave), media writer and metrics, and the audio domain config."""

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir

from src.backbones import build_backbone
from src.domains.audio.media import AudioMedia, spectrogram_image
from src.domains.audio.metrics import AudioMetrics
from src.media import build_media
from src.metrics import build_metrics, frechet_distance

SR = 16000


def tone(freq, n=4000, sr=SR, amp=0.5):
    return amp * torch.sin(2 * torch.pi * freq * torch.arange(n) / sr)


def diffwave(**kw):
    torch.manual_seed(0)
    net = build_backbone({"name": "diffwave", "preset": "tiny", **kw})
    torch.nn.init.normal_(net.output.weight, std=0.1)  # the zero-initialised head would hide the body
    return net


@pytest.mark.parametrize("shape", [(2, 1, 1), (3, 1, 37), (2, 1, 1000), (1, 2, 513)])
def test_diffwave_keeps_any_length(shape):
    net = diffwave(in_channels=shape[1])
    x = torch.randn(shape, requires_grad=True)
    out = net(x, torch.rand(shape[0]))
    assert out.shape == shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffwave_uses_the_noise_level():
    net = diffwave()
    x = torch.randn(2, 1, 200)
    assert not torch.allclose(net(x, torch.tensor([0.1, 0.1])), net(x, torch.tensor([0.9, 0.9])))


def test_base_preset_is_the_papers_size():
    vocoder = build_backbone({"name": "diffwave", "preset": "base", "mel_conditioning": True, "n_mels": 80})
    n = sum(p.numel() for p in vocoder.parameters())
    assert abs(n - 2.64e6) / 2.64e6 < 0.02  # DiffWave BASE: 30 layers, 64 channels, 2.64M parameters
    unconditional = build_backbone({"name": "diffwave", "preset": "base"})
    assert 2.2e6 < sum(p.numel() for p in unconditional.parameters()) < n
    assert unconditional.receptive_field() == 1 + 2 * 3 * (2**10 - 1)  # three cycles of dilations 1..512


def test_presets_grow_and_unknown_preset_is_rejected():
    sizes = [sum(p.numel() for p in build_backbone({"name": "diffwave", "preset": p}).parameters())
             for p in ("tiny", "small", "base", "large")]
    assert sizes == sorted(sizes) and sizes[0] < 200_000
    with pytest.raises(ValueError, match="preset"):
        build_backbone({"name": "diffwave", "preset": "huge"})


def test_mel_conditioning_changes_the_output():
    net = diffwave(mel_conditioning=True, n_mels=20)
    x, t = torch.randn(2, 1, 512), torch.rand(2)
    mel_a, mel_b = torch.randn(2, 20, 3), torch.randn(2, 20, 3)
    out_a, out_b = net(x, t, mel_a), net(x, t, mel_b)
    assert out_a.shape == x.shape and not torch.allclose(out_a, out_b)
    assert net(x, t).shape == x.shape  # cond=None: the unconditional path
    with pytest.raises(ValueError, match="mel spectrogram"):
        net(x, t, torch.randn(2, 7, 3))
    with pytest.raises(ValueError, match="without mel conditioning"):
        diffwave()(x, t, mel_a)


def test_audio_media_writes_playable_wavs(tmp_path):
    media = build_media({"kind": "audio", "sample_rate": 22050})
    samples = torch.stack([tone(440, 2000)[None], tone(880, 2000)[None] * 3])  # the second one clips
    paths = media.save(samples, tmp_path / "out", prefix="step0000010")
    assert [p.name for p in paths] == ["step0000010_00000.wav", "step0000010_00001.wav"]
    data, sr = sf.read(paths[0], dtype="float32")
    assert sr == 22050 and data.shape == (2000,)
    np.testing.assert_allclose(data, samples[0, 0].numpy(), atol=1e-4)  # 16-bit PCM
    assert np.abs(sf.read(paths[1])[0]).max() <= 1.0
    stereo = AudioMedia(sample_rate=SR).save(torch.randn(1, 2, 300).clamp(-1, 1), tmp_path, "st")
    assert sf.read(stereo[0])[0].shape == (300, 2)


def test_non_finite_samples_are_written_as_silence(tmp_path):
    x = tone(440, 500)[None, None].clone()
    x[..., 10] = float("nan")
    data, _ = sf.read(AudioMedia(sample_rate=SR).save(x, tmp_path)[0])
    assert np.isfinite(data).all() and data[10] == 0


def test_audio_media_for_wandb():
    import wandb

    samples = torch.stack([tone(440)[None], tone(2000)[None]])
    logged = AudioMedia(sample_rate=SR).to_wandb(samples, key="samples/ema")
    assert len(logged["samples/ema/audio"]) == 2 and len(logged["samples/ema/spectrogram"]) == 2
    assert all(isinstance(a, wandb.Audio) for a in logged["samples/ema/audio"])
    assert all(isinstance(i, wandb.Image) for i in logged["samples/ema/spectrogram"])


def test_spectrogram_image_puts_low_notes_at_the_bottom():
    low, high = spectrogram_image(tone(200)[None], SR), spectrogram_image(tone(6000)[None], SR)
    assert low.dtype == np.uint8 and low.ndim == 3 and low.shape[-1] == 3
    brightest_row = [int(img.sum((1, 2)).argmax()) for img in (low, high)]
    assert brightest_row[0] > low.shape[0] * 0.75 and brightest_row[1] < high.shape[0] * 0.5


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)) == pytest.approx(expected, rel=1e-6)


def clips(kind, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return (torch.rand(n, 1, 4000, generator=g) * 2 - 1) * 0.5
    freqs = 200 + 400 * torch.rand(n, generator=g)
    return torch.stack([tone(float(f))[None] for f in freqs])


def test_audio_metrics_zero_for_identical_sets_and_larger_for_different_ones():
    metrics = build_metrics({"kind": "audio", "sample_rate": SR, "num_samples": 4, "steps": 8})
    real = clips("tones")
    same = metrics(real, real.clone())
    assert same["mrstft"] == 0.0 and abs(same["frechet_mel"]) < 1e-3
    similar = metrics(clips("tones", seed=1), real)
    different = metrics(clips("noise"), real)
    assert 0 < similar["mrstft"] < different["mrstft"]
    assert 0 < similar["frechet_mel"] < different["frechet_mel"]
    assert "mrstft_paired" not in different


def test_paired_stft_distance_for_vocoders():
    metrics = AudioMetrics(sample_rate=SR, paired=True)
    real = clips("tones")
    assert metrics(real, real)["mrstft_paired"] == 0.0
    slightly_off = 0.8 * real + 0.001 * torch.randn_like(real)
    shuffled = real[torch.arange(len(real)).roll(1)]  # same set, wrong pairing: only the paired score sees it
    assert metrics(slightly_off, real)["mrstft_paired"] < metrics(shuffled, real)["mrstft_paired"]
    assert metrics(shuffled, real)["mrstft"] == pytest.approx(0.0, abs=1e-6)


def test_unknown_metrics_kind():
    with pytest.raises(ValueError, match="metrics.kind"):
        build_metrics({"kind": "smell"})


def test_audio_domain_config_composes_with_smoke():
    from pathlib import Path

    from src.config import register_resolvers

    register_resolvers()
    configs = str(Path(__file__).resolve().parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("train", overrides=["domain=audio", "experiment=smoke", "datamodule.sample_rate=8000"])
    assert cfg.backbone.name == "diffwave" and cfg.backbone.preset == "tiny"
    assert cfg.media.kind == "audio" and cfg.media.sample_rate == 8000
    assert cfg.metrics.sample_rate == 8000 and cfg.metrics.num_samples == cfg.sampling.num
    assert cfg.backbone.mel_conditioning is False and cfg.metrics.paired is False


def test_vocoder_training_logs_paired_metrics(tmp_path):
    """A two-step fit with mel conditioning: batches carry `cond`, metrics sample from the held-out mels."""
    import pytorch_lightning as pl

    from src.domains.audio.data import AudioDataModule
    from src.metrics import MetricsCallback
    from src.module import DiffusionModule

    dm = AudioDataModule(sample_rate=8000, clip_seconds=0.125, builtin_size=16, val_fraction=0.25,
                         batch_size=4, num_workers=0, mel_conditioning=True, n_mels=16, hop_length=128)
    backbone = {"name": "diffwave", "preset": "tiny", "mel_conditioning": True, "n_mels": 16}
    module = DiffusionModule(backbone=backbone,
                             diffusion={"family": "ddpm", "clip_denoised": [-1.0, 1.0]}, data_shape=[1, 1000],
                             ema={"decay": 0.9})
    metrics = MetricsCallback({"kind": "audio", "sample_rate": 8000, "paired": True, "num_samples": 3,
                                     "steps": 3, "n_mels": 16, "fft_sizes": [64, 128]})
    trainer = pl.Trainer(max_steps=2, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[metrics], accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert {"val/mrstft", "val/mrstft_paired", "val/frechet_mel"} <= set(logged)
    assert all(torch.isfinite(logged[k]) for k in ("val/mrstft", "val/mrstft_paired", "val/frechet_mel"))
    assert metrics._real[1] is not None and metrics._real[1].shape[:2] == (3, 16)  # the real clips' mels
