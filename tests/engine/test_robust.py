"""Training that goes wrong: non-finite steps are skipped or stop the run, non-finite checkpoints are never
written, and a resume finds the newest readable checkpoint."""

import logging

import pytest
import torch

from src.checkpoint import AtomicCheckpointIO, CheckpointError, checkpoint_step
from src.train import own_checkpoint, remove_stale_temp_files, train

TINY = ["experiment=smoke", "logger=none", "trainer.max_steps=8", "checkpoint.every_n_steps=2",
        "checkpoint.keep=-1", "trainer.val_check_interval=8", "sampling.num=0", "trainer.accelerator=cpu"]


def _all_finite(folder):
    ckpts = sorted(folder.glob("*.ckpt"))
    assert ckpts, f"no checkpoints in {folder}"
    for path in ckpts:
        sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        for k, v in sd.items():
            if v.is_floating_point():
                assert torch.isfinite(v).all(), f"{path.name}: {k} is not finite"


def test_nonfinite_stops_the_run_and_names_the_step(compose_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="src.runtime.nonfinite"):
        res = train(compose_cfg(TINY + [f"paths.output_dir={out}", "optim.lr=1e30"]))
    assert res["global_step"] < 8
    assert any("Non-finite loss or gradient at step 2" in r.getMessage() and "stopping" in r.getMessage()
               for r in caplog.records)
    _all_finite(out / "checkpoints")


def test_nonfinite_skip_mode_goes_on_then_stops_after_max_skips(compose_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="src.runtime.nonfinite"):
        res = train(compose_cfg(TINY + [f"paths.output_dir={out}", "optim.lr=1e30", "optim.nonfinite=skip",
                                        "optim.nonfinite_max_skips=3"]))
    skipped = [r for r in caplog.records if "update skipped (" in r.getMessage()]
    assert len(skipped) == 3  # steps 2, 3, 4 skipped, step 5 the fourth in a row stops it
    assert 4 <= res["global_step"] < 8
    ckpts = out / "checkpoints"
    assert (ckpts / "step0000004.ckpt").exists()  # written after the first skip: the run went on
    _all_finite(ckpts)


def test_nonfinite_guard_counts_and_stops_without_a_run():
    """The guard shared by the diffusion and autoencoder stages: a non-finite loss or gradient is found (the loss
    flags of a whole accumulation window count), consecutive skips are counted and reset, the limit stops."""
    from src.errors import ConfigError
    from src.runtime.nonfinite import NonfiniteGuard

    class Trainer:
        is_global_zero, should_stop = True, False

        class strategy:  # noqa: N801 - the attribute Lightning's trainer has
            @staticmethod
            def reduce_boolean_decision(decision, all=True):
                return decision

    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    guard, trainer = NonfiniteGuard("skip", max_skips=1), Trainer()
    guard.add_loss(torch.tensor(float("nan")))
    guard.add_loss(torch.tensor(1.0))  # a later finite micro-batch does not hide the first
    assert not guard.finite([p], trainer)
    assert guard.finite([p], trainer)  # the window's flags were consumed
    p.grad = torch.tensor([1.0, float("inf")])
    assert not guard.finite([p], trainer)
    assert guard.record(False, 1, trainer) is False and guard.consecutive == 1 and not trainer.should_stop
    assert guard.record(True, 2, trainer) is False and guard.consecutive == 0
    guard.record(False, 3, trainer)
    assert guard.record(False, 4, trainer) is True and trainer.should_stop and guard.stopped["step"] == 4
    assert NonfiniteGuard("stop").record(False, 1) is True  # stop mode: the first one
    with pytest.raises(ConfigError, match="optim.nonfinite must be stop or skip"):
        NonfiniteGuard("ignore")


def test_nonfinite_state_dict_is_not_written(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)
    assert checkpoint_step(path) == 1
    with pytest.raises(CheckpointError, match="not finite"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.tensor([1.0, float("nan")])}}, path)
    assert checkpoint_step(path) == 1  # the finite one is still there
    assert not list(tmp_path.glob(".*.tmp-*"))


def _save(path, step):
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "state_dict": {"w": torch.ones(2)}}, path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_last_falls_back_to_step_file(tmp_path, damage):
    folder = tmp_path / "checkpoints"
    _save(folder / "step0000004.ckpt", 4)
    _save(folder / "step0000006.ckpt", 6)
    last = folder / "last.ckpt"
    _save(last, 8)
    data = last.read_bytes()
    last.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    assert own_checkpoint(tmp_path) == (folder / "step0000006.ckpt", 6)


def test_newer_step_file_preferred_over_last(tmp_path):
    folder = tmp_path / "checkpoints"
    _save(folder / "last.ckpt", 4)
    _save(folder / "step0000006.ckpt", 6)
    assert own_checkpoint(tmp_path) == (folder / "step0000006.ckpt", 6)
    _save(folder / "step0000004.ckpt", 4)
    _save(folder / "last.ckpt", 6)
    assert own_checkpoint(tmp_path) == (folder / "last.ckpt", 6)  # a tie keeps last.ckpt


def test_stale_temp_files_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    _save(folder / "last.ckpt", 2)
    stale = folder / ".last.ckpt.tmp-12345"
    stale.write_bytes(b"half")
    remove_stale_temp_files(tmp_path)
    assert not stale.exists() and (folder / "last.ckpt").exists()


def test_resume_uses_step_file_when_last_is_corrupt(compose_cfg, tmp_path):
    out = tmp_path / "run"
    first = train(compose_cfg(TINY + [f"paths.output_dir={out}", "trainer.max_steps=4"]))
    assert first["global_step"] == 4
    ckpts = out / "checkpoints"
    (ckpts / "last.ckpt").write_bytes(b"truncated")
    (ckpts / "step0000002.ckpt").unlink()  # a restart from step 0 would write it again
    second = train(compose_cfg(TINY + [f"paths.output_dir={out}", "trainer.max_steps=6"]))
    assert second["global_step"] == 6
    assert not (ckpts / "step0000002.ckpt").exists()
    assert checkpoint_step(ckpts / "last.ckpt") == 6


def test_rotation_keeps_the_last_finite_checkpoint(tmp_path):
    """A refused (non-finite) save stops the run before ModelCheckpoint deletes the older, finite file
    (ModelCheckpoint saves at step 3 before the module hook poisons the weights)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.demos.boring_classes import BoringModel

    class GoesNaN(BoringModel):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.global_step == 3:
                with torch.no_grad():
                    self.layer.weight.fill_(float("nan"))

    folder = tmp_path / "checkpoints"
    ckpt = ModelCheckpoint(dirpath=folder, filename="step{step:07d}", auto_insert_metric_name=False,
                           every_n_train_steps=1, save_top_k=1, monitor="step", mode="max", save_last=True,
                           enable_version_counter=False)
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ckpt], plugins=[AtomicCheckpointIO()],
                         default_root_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="step0000004.ckpt at step 4"):
        trainer.fit(GoesNaN())
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step0000003.ckpt"]
    assert checkpoint_step(folder / "last.ckpt") == 3
    _all_finite(folder)
