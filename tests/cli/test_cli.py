"""The commands users type: train (smoke), sample, and the errors they see for bad input."""

import subprocess

import pytest
import pytorch_lightning as pl
from PIL import Image

from src.domains.image.data import ImageDataModule
from src.module import DiffusionModule
from tests.conftest import ROOT, run_module


@pytest.mark.slow
def test_smoke_train_then_sample(tmp_path):
    out = tmp_path / "run"
    res = run_module(["src.train", "domain=image", "experiment=smoke", f"paths.output_dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "config.yaml").exists()
    assert "output_dir: " + str(out) in (out / "config.yaml").read_text()
    pngs = sorted((out / "samples").glob("*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (32, 32)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))

    samples = tmp_path / "drawn"
    res = run_module(["src.sample", f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=5",
                      "sampler=heun", "steps=4", f"out={samples}"])
    assert res.returncode == 0, res.stderr[-3000:]
    drawn = sorted(samples.glob("*.png"))
    assert len(drawn) == 5 and Image.open(drawn[0]).mode == "RGB"


def test_quickstart_preset_trains_flow_matching_and_samples(compose_cfg, tmp_path):
    """The README's first command, cut to 4 steps: flow matching on the tiny UNet, samples as PNGs."""
    from src.train import train

    cfg = compose_cfg(["experiment=quickstart", "logger=none", f"paths.output_dir={tmp_path}",
                       "trainer.max_steps=4", "trainer.val_check_interval=4", "sampling.every_n_steps=4",
                       "sampling.num=2", "sampling.steps=3", "checkpoint.every_n_steps=4",
                       "datamodule.num_workers=0", "datamodule.builtin_size=64", "trainer.accelerator=cpu"])
    assert cfg.diffusion.family == "flow" and cfg.backbone.preset == "tiny"
    assert cfg.diffusion.sampler == "dpmpp_2m_sde" and cfg.diffusion.steps == 32  # docs/studies/image_quality.md
    train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert len(sorted((tmp_path / "samples").glob("step0000004_*.png"))) == 2


@pytest.mark.parametrize("override,message", [
    ("trainer.max_stepz=3", "max_stepz"),
    ("domain=video", "domain/video"),
    ("datamodule.path=/nonexistent/pngs", "datamodule.path=/nonexistent/pngs does not exist"),
    ("backbone.name=transformer", "Unknown backbone.name 'transformer'"),
])
def test_bad_overrides_fail_with_a_sentence(tmp_path, override, message):
    res = run_module(["src.train", "experiment=smoke", "logger=none", f"paths.output_dir={tmp_path}", override],
                     timeout=300)
    assert res.returncode != 0
    assert message in res.stderr
    if "datamodule" in override or "backbone" in override:
        assert "Traceback" not in res.stderr


def test_sample_cli_rejects_unknown_options_and_missing_checkpoint(tmp_path):
    res = run_module(["src.sample", "ckpt=x.ckpt", "num_sample=3", f"out={tmp_path}"])
    assert res.returncode != 0 and "unknown option" in res.stderr and "num_samples" in res.stderr
    res = run_module(["src.sample", f"ckpt={tmp_path / 'none.ckpt'}", f"out={tmp_path}"])
    assert res.returncode != 0 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = run_module(["src.sample", "--help"])
    assert res.returncode == 0 and "usage: python -m src.sample" in res.stdout and "num_samples=16" in res.stdout


class _Losses(pl.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_short_training_loss_falls():
    pl.seed_everything(0)
    dm = ImageDataModule(resolution=16, batch_size=16, num_workers=0, builtin_size=256)
    dm.setup()
    module = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 3},
                             diffusion={"family": "ddpm", "prediction": "eps"}, data_shape=dm.data_shape,
                             optim={"lr": 2e-3, "warmup_steps": 5})
    rec = _Losses()
    trainer = pl.Trainer(max_steps=60, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0, callbacks=[rec],
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    first, last = sum(rec.values[:10]) / 10, sum(rec.values[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_ci_script_runs_the_readme_test_command():
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert command in (ROOT / "README.md").read_text()
    assert command in (ROOT / ".ci" / "run").read_text()
    assert subprocess.run(["bash", "-n", ".ci/run"], cwd=ROOT).returncode == 0
