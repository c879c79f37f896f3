"""One W&B run per run folder, also when ``src.train.train`` is called twice in one process (a sweep, a notebook):
the second call does not log into the first call's still-open run."""

import pytest

from tests.conftest import compose

TINY = ["experiment=smoke", "logger=wandb", "trainer.accelerator=cpu", "threads=1", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "sampling.every_n_steps=0",
        "checkpoint.every_n_steps=2", "trainer.enable_progress_bar=false", "datamodule.resolution=16",
        "datamodule.builtin_size=16", "datamodule.batch_size=4", "datamodule.num_workers=0"]


@pytest.mark.slow
def test_two_runs_in_one_process_get_their_own_wandb_runs(tmp_path):
    import wandb

    from src.train import train

    try:
        for name in ("first", "second"):
            train(compose([*TINY, f"paths.output_dir={tmp_path / name}"]))
            assert wandb.run is not None and str(tmp_path / name) in wandb.run.dir  # left open for the caller
    finally:
        wandb.finish()
    for name in ("first", "second"):
        runs = list((tmp_path / name / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and any(runs[0].rglob("*.wandb")), name
