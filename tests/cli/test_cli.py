"""The commands users type: train (smoke), sample, and the errors they see for bad input."""

import os
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
from PIL import Image

from src.domains.image.data import ImageDataModule
from src.module import DiffusionModule
from src.options import EXIT_BAD_INPUT
from tests.conftest import ROOT
from tests.helpers.background import Background, selected


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
def test_bad_overrides_fail_with_a_sentence(compose_cfg, capsys, tmp_path, override, message):
    """In this process, through what `python -m src.train` runs: Hydra's composition refuses a key or group that
    does not exist, naming it; the project's own checks end in ``main`` as exit status 2 and one line."""
    from hydra.errors import HydraException

    from src.train import main

    args = ["experiment=smoke", "logger=none", f"paths.output_dir={tmp_path / 'run'}", override]
    if override.startswith(("trainer.", "domain=")):
        with pytest.raises(HydraException, match=re.escape(message)):
            compose_cfg(args)
        return
    with pytest.raises(SystemExit) as stop:  # a project error, not a traceback
        main.__wrapped__(compose_cfg(args))
    assert stop.value.code == EXIT_BAD_INPUT
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "run").exists()


def test_sample_cli_rejects_unknown_options_and_missing_checkpoint(tmp_path, capsys):
    """In this process (`python -m src.sample` runs the same main): the exit status each would end with and what
    it says; the command itself, on a missing checkpoint, is run by the module fixture below."""
    from src.sample import main as sample_main

    with pytest.raises(SystemExit) as stop:
        sample_main(["ckpt=x.ckpt", "num_sample=3", f"out={tmp_path}"])
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_BAD_INPUT and "unknown option" in err and "num_samples" in err
    with pytest.raises(SystemExit) as stop:
        sample_main([f"ckpt={tmp_path / 'none.ckpt'}", f"out={tmp_path}"])
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_BAD_INPUT and "does not exist" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as stop:
        sample_main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "usage: python -m src.sample" in out and "num_samples=16" in out


SMOKE = ["src.train", "domain=image", "experiment=smoke", "trainer.max_steps=4", "trainer.val_check_interval=4",
         "checkpoint.every_n_steps=4", "sampling.every_n_steps=4", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module", autouse=True)
def commands(request, tmp_path_factory):
    """The command lines of this file that run as real processes, started when the module begins (each spends
    most of its time in its interpreter's start-up; the in-process tests run meanwhile): the smoke training run
    (cut to 4 steps), a typo in a training override, and the sampler on a checkpoint that does not exist."""
    if not selected(request, "test_smoke_train_then_sample", "test_bad_input_stops_the_commands_with_a_status"):
        yield None
        return
    base = tmp_path_factory.mktemp("commands")
    folders = {"smoke": base / "run", "typo": base / "typo", "missing": base / "none.ckpt"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with Background(timeout=600) as started:
        started.start("smoke", [sys.executable, "-m", *SMOKE, f"paths.output_dir={folders['smoke']}"], env, ROOT)
        started.start("typo", [sys.executable, "-m", "src.train", "experiment=smoke", "logger=none",
                               f"paths.output_dir={folders['typo']}", "trainer.max_stepz=3"], env, ROOT)
        started.start("missing", [sys.executable, "-m", "src.sample", f"ckpt={folders['missing']}",
                                  f"out={base / 'drawn'}"], env, ROOT)
        yield started, folders


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


# ---- the commands themselves (started by the module fixture above) --------------------------------------------
@pytest.mark.slow
def test_smoke_train_then_sample(commands, tmp_path):
    """The command a user types, as a process, then the sampler on its checkpoint (in this process: `python -m
    src.sample` runs the same main; its command line is checked below)."""
    from src.sample import main as sample_main

    started, folders = commands
    res, out = started.result("smoke"), folders["smoke"]
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "config.yaml").exists()
    assert "output_dir: " + str(out) in (out / "config.yaml").read_text()
    pngs = sorted((out / "samples").glob("*.png"))
    assert len(pngs) == 4 and Image.open(pngs[0]).size == (32, 32)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))

    samples = tmp_path / "drawn"
    sample_main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=5", "sampler=heun", "steps=4",
                 f"out={samples}"])
    drawn = sorted(samples.glob("*.png"))
    assert len(drawn) == 5 and Image.open(drawn[0]).mode == "RGB"


@pytest.mark.slow  # interpreters importing torch and Lightning
def test_bad_input_stops_the_commands_with_a_status(commands):
    """The commands themselves: Hydra's own report of a bad override (a non-zero exit status, no run folder), and
    the sampler's one line on stderr with exit status 2, no traceback."""
    started, folders = commands
    res, out = started.result("typo"), folders["typo"]
    assert res.returncode != 0
    assert "max_stepz" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    res = started.result("missing")
    assert res.returncode == EXIT_BAD_INPUT and "does not exist" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(folders["missing"]) in res.stderr, res.stderr
