"""Each fast path trains to the same loss as the plain path on CPU (tolerances stated per switch)."""

import pytest
import pytorch_lightning as pl
import torch

from src.domains.image.data import ImageDataModule
from src.ema import EMA
from src.module import DiffusionModule


class _Record(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _train(perf=None, optim=None, precision="32-true", steps=8):
    pl.seed_everything(0, verbose=False)
    dm = ImageDataModule(resolution=16, batch_size=8, num_workers=0, builtin_size=64, random_flip=False)
    module = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 3},
                             diffusion={"family": "ddpm"}, data_shape=dm.data_shape,
                             optim={"lr": 1e-3, **(optim or {})}, perf=perf)
    rec = _Record()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0, callbacks=[rec],
                         precision=precision, use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    return torch.tensor(rec.losses), module


@pytest.fixture(scope="module")
def plain():
    return _train()


def test_channels_last_same_losses(plain):
    losses, module = _train(perf={"channels_last": True})
    assert module.backbone.net.conv_in.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(losses, plain[0], rtol=1e-4, atol=1e-5)


def test_fused_adamw_same_losses(plain):
    losses, _ = _train(optim={"fused": True})
    torch.testing.assert_close(losses, plain[0], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_close_losses(plain):
    losses, _ = _train(precision="bf16-mixed")
    # bf16 rounds activations to 8 mantissa bits: the curve agrees within 5%
    torch.testing.assert_close(losses, plain[0], rtol=5e-2, atol=5e-3)


@pytest.mark.slow
def test_compile_same_losses_and_plain_checkpoint_keys(plain):
    losses, module = _train(perf={"compile": True}, steps=4)
    # inductor reorders float sums; Adam amplifies the last-bit differences to well under 2% in 4 steps
    torch.testing.assert_close(losses, plain[0][:4], rtol=2e-2, atol=1e-3)
    keys = module.state_dict().keys()
    assert not any("_orig_mod" in k for k in keys)
    fresh = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 3},
                            diffusion={"family": "ddpm"}, data_shape=[3, 16, 16])
    fresh.load_state_dict(module.state_dict())  # a compiled run's weights load into a plain module


def test_foreach_ema_equals_per_parameter_update():
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    ema = EMA(net, decay=0.9, warmup=False)
    reference = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update(net)
    for r, p, e in zip(reference, net.parameters(), ema.module.parameters()):
        torch.testing.assert_close(e, 0.9 * r + 0.1 * p)


def test_grad_norm_is_computed_only_on_logging_steps(monkeypatch, tmp_path):
    """The gradient norm (a collective under FSDP2) runs on the steps the logger writes, and is logged."""
    calls = []
    real = torch.nn.utils.get_total_norm
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    pl.seed_everything(0, verbose=False)
    dm = ImageDataModule(resolution=16, batch_size=4, num_workers=0, builtin_size=32, random_flip=False)
    module = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 3},
                             diffusion={"family": "ddpm"}, data_shape=dm.data_shape, optim={"lr": 1e-3})
    trainer = pl.Trainer(max_steps=6, log_every_n_steps=3, logger=pl.loggers.CSVLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", limit_val_batches=0, use_distributed_sampler=False,
                         gradient_clip_val=None)
    trainer.fit(module, datamodule=dm)
    assert len(calls) == 2  # steps 3 and 6 of 6
    assert "train/grad_norm" in trainer.logged_metrics


def test_auto_bf16_precision_follows_the_cpus_native_bf16(monkeypatch):
    import src.train as train_mod

    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(train_mod, "native_cpu_bf16", lambda native=native: native)
        assert train_mod.resolve_precision({"precision": "auto-bf16", "accelerator": "cpu"}) == expected
        assert train_mod.resolve_precision({"precision": "auto", "accelerator": "cpu"}) == "32-true"
    assert train_mod.resolve_precision({"precision": "16-mixed"}) == "16-mixed"
