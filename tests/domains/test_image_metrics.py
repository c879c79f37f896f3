"""Image sample quality logged at validation: Frechet distance on a TorchScript feature network or random features."""

import pytest
import torch

from src.errors import ConfigError
from src.metrics import build_metrics

CALLBACK = {"num_samples": 4, "sampler": None, "steps": None, "batch_size": None}


class TinyEncoder(torch.nn.Module):
    """What a user's Inception/CLIP TorchScript file is, in miniature: images in, one vector per image out."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))


def blobs(n: int, shift: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 16, 16, generator=g) * 0.5 + shift - 1).clamp(-1, 1)


def test_default_random_features_are_fixed_and_separate_sets():
    a = build_metrics({"kind": "image", **CALLBACK})
    b = build_metrics({"kind": "image", **CALLBACK})
    real, close, far = blobs(24, 0.5, 0), blobs(24, 0.5, 1), blobs(24, 1.3, 2)
    assert torch.equal(a.features(real), b.features(real))  # the same network in every run
    assert a.features(real).shape == (24, 128)
    d_close, d_far = a(close, real)["frechet_features"], a(far, real)["frechet_features"]
    assert 0 <= d_close < d_far
    assert a(real, real)["frechet_features"] == pytest.approx(0, abs=1e-6)


def test_torchscript_feature_network_from_a_local_path(tmp_path):
    path = tmp_path / "encoder.pt"
    torch.jit.save(torch.jit.script(TinyEncoder()), str(path))
    metrics = build_metrics({"kind": "image", "feature_network": str(path), "feature_resolution": 8, **CALLBACK})
    real = blobs(12, 0.5, 0).repeat(1, 3, 1, 1)  # RGB
    assert metrics.features(real).shape == (12, 6)
    assert metrics.features(blobs(12, 0.5, 0)).shape == (12, 6)  # grey repeated to RGB
    scores = metrics(blobs(12, 1.3, 1), real)
    assert set(scores) == {"frechet_features"} and scores["frechet_features"] > 0


def test_a_missing_or_non_torchscript_network_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match=r"^metrics\.feature_network=\S+nope\.pt is not a file; .*torch\.jit\.save"):
        build_metrics({"kind": "image", "feature_network": str(tmp_path / "nope.pt"), **CALLBACK})
    weights = tmp_path / "weights.pt"
    torch.save(TinyEncoder().state_dict(), weights)  # a state dict, not TorchScript
    text = tmp_path / "notes.txt"
    text.write_text("not a network")
    for bad in (weights, text):
        with pytest.raises(ConfigError, match=r"^metrics\.feature_network=\S+ is not a TorchScript file \(") as e:
            build_metrics({"kind": "image", "feature_network": str(bad), **CALLBACK})
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="metrics.feature_resolution must be a positive whole number"):
        build_metrics({"kind": "image", "feature_resolution": 0, **CALLBACK})


def test_image_training_logs_the_frechet_distance_of_its_feature_network(tmp_path):
    import pytorch_lightning as pl

    from src.domains.image.data import ImageDataModule
    from src.metrics import MetricsCallback
    from src.module import DiffusionModule

    path = tmp_path / "encoder.pt"
    torch.jit.save(torch.jit.script(TinyEncoder()), str(path))
    dm = ImageDataModule(resolution=8, channels=1, batch_size=4, num_workers=0, builtin_size=32, val_fraction=0.25)
    module = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 1},
                             diffusion={"family": "flow"}, data_shape=[1, 8, 8], ema={"decay": 0.9})
    metrics = MetricsCallback({"kind": "image", "feature_network": str(path), "num_samples": 4, "steps": 2})
    trainer = pl.Trainer(max_steps=2, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[metrics], accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["val/frechet_features"])


def test_the_image_config_names_the_feature_network(compose_cfg):
    cfg = compose_cfg(["domain=image", "experiment=quickstart", "metrics.feature_network=/x/inception.pt"])
    assert cfg.metrics.kind == "image" and cfg.metrics.feature_network == "/x/inception.pt"
    assert cfg.metrics.num_samples == cfg.sampling.num and cfg.metrics.feature_resolution is None
