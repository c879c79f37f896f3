"""EMA maths against the closed form, once per optimizer step, and exact state round trips."""

import pytorch_lightning as pl
import torch
from torch import nn

from src.ema import EMA
from src.module import DiffusionModule


def test_ema_matches_closed_form_without_warmup():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    start = [p.detach().clone() for p in model.parameters()]
    history = []
    for k in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (k + 1))
        history.append([p.detach().clone() for p in model.parameters()])
        ema.update(model)
    d, n = 0.9, len(history)
    for i, p_ema in enumerate(ema.module.parameters()):
        expected = d**n * start[i] + sum((1 - d) * d ** (n - 1 - k) * history[k][i] for k in range(n))
        torch.testing.assert_close(p_ema, expected)
    assert ema.updates == 5 and int(ema.num_updates) == 5


def test_ema_warmup_schedule():
    ema = EMA(nn.Linear(2, 2), decay=0.999, warmup=True, power=2 / 3)
    assert ema.decay_at(0) == 0.0  # the first update copies the weights
    assert abs(ema.decay_at(7) - (1 - 8 ** (-2 / 3))) < 1e-12
    assert ema.decay_at(10**9) == 0.999
    assert all(ema.decay_at(n) <= ema.decay_at(n + 1) for n in range(100))


def test_ema_state_roundtrip():
    model = nn.Linear(4, 4)
    ema = EMA(model, decay=0.5)
    for _ in range(3):
        with torch.no_grad():
            model.weight.mul_(1.1)
        ema.update(model)
    fresh = EMA(nn.Linear(4, 4), decay=0.5)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.updates == 3
    torch.testing.assert_close(fresh.module.weight, ema.module.weight)


class _Data(pl.LightningDataModule):
    def train_dataloader(self):
        x = torch.randn(64, 1, 8, 8)
        return torch.utils.data.DataLoader([{"x": xi} for xi in x], batch_size=4)


def test_ema_updates_once_per_optimizer_step_under_accumulation():
    module = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 1},
                             diffusion={"family": "edm"}, data_shape=[1, 8, 8], ema={"decay": 0.99})
    trainer = pl.Trainer(max_steps=3, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         limit_val_batches=0)
    trainer.fit(module, datamodule=_Data())
    assert trainer.global_step == 3
    assert module.ema.updates == 3
    # after training, EMA weights differ from the raw weights (they lag behind)
    diffs = [(a - b).abs().max() for a, b in zip(module.ema.module.parameters(), module.backbone.parameters())]
    assert max(diffs) > 0
