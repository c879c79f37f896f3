"""End to end: the same model trains from a folder and from its shards, resumes exactly from shards, and a
two-process DDP run over an uneven number of shards finishes."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from datamodules.shards import write_shards
from src.train import train
from tests.helpers.background import Background, selected

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["experiment=smoke", "logger.mode=disabled", "trainer.enable_progress_bar=false",
         "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
         "checkpoint.every_n_steps=3", "sampling.num=2", "sampling.steps=2", "datamodule.resolution=16",
         "datamodule.batch_size=4", "datamodule.val_fraction=0.1"]

pytestmark = pytest.mark.slow


def make_images(root: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        pixels = rng.integers(0, 255, (18, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"c{i % 2}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    src = make_images(tmp_path_factory.mktemp("src"), n=30)
    out = tmp_path_factory.mktemp("shards")
    write_shards("image", src, out, max_count=10, val_fraction=0.1)  # 27 training samples: 3 shards
    assert len(list(out.glob("shard-*.tar"))) == 3
    return src, out


@pytest.fixture(scope="module", autouse=True)
def ddp_run(request, data, tmp_path_factory):
    """A two-process DDP run over the 3 shards split by rank (uneven), started when the module begins so the
    in-process tests run meanwhile."""
    if not selected(request, "test_ddp_two_ranks_over_uneven_shards_finishes"):
        yield None
        return
    _, shards = data
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "src.train", *SMALL, f"datamodule.path={shards}", f"paths.output_dir={out}",
           "datamodule.shards.resample=false", "datamodule.num_workers=1", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.strategy=ddp"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    with Background(timeout=420) as started:
        started.start("ddp", cmd, env, ROOT)
        yield started, out


def run(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return train(compose("train", overrides=SMALL + overrides))


def weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_same_model_trains_from_folder_and_from_shards(data, tmp_path):
    src, out = data
    results = {}
    for name, path in (("folder", src), ("shards", out)):
        r = run([f"datamodule.path={path}", f"paths.output_dir={tmp_path / name}", "datamodule.num_workers=1",
                 "trainer.max_steps=3"])
        assert r["global_step"] == 3 and (tmp_path / name / "checkpoints" / "last.ckpt").exists()
        assert list((tmp_path / name / "samples").glob("*.png"))
        assert torch.isfinite(torch.tensor([r["metrics"]["train/loss"], r["metrics"]["val/loss"]])).all()
        results[name] = weights(tmp_path / name / "checkpoints" / "last.ckpt")
    assert results["folder"].keys() == results["shards"].keys()  # one model; only the data source changed
    assert not all(torch.equal(results["folder"][k], results["shards"][k]) for k in results["folder"])


def test_resume_from_shards_matches_the_uninterrupted_run(data, tmp_path):
    _, out = data
    common = [f"datamodule.path={out}", "datamodule.num_workers=2"]
    run(common + [f"paths.output_dir={tmp_path / 'full'}"])
    ckpt = torch.load(tmp_path / "full" / "checkpoints" / "step0000003.ckpt", weights_only=True)
    assert ckpt["ImageDataModule"]["stream"]["streams"] == 2
    run(common + [f"paths.output_dir={tmp_path / 'resumed'}",
                  f"ckpt_path={tmp_path / 'full' / 'checkpoints' / 'step0000003.ckpt'}"])
    full = weights(tmp_path / "full" / "checkpoints" / "step0000006.ckpt")
    resumed = weights(tmp_path / "resumed" / "checkpoints" / "step0000006.ckpt")
    for k in full:  # weights and EMA after steps 4-6 depend on exactly which batches were seen
        assert torch.equal(full[k], resumed[k]), k


def test_ddp_two_ranks_over_uneven_shards_finishes(ddp_run):
    started, out = ddp_run
    proc = started.result("ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["ImageDataModule"]["stream"]["world_size"] == 2
