"""Fast, single-process checks of the distributed pieces: sharding units, EMA on FSDP2 shards, per-rank data,
sharded checkpoints and their consolidation, resume-point choice, and the preemption flag."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch import nn

from datamodules.base import DiffusionDataModule, ResumableSampler
from src.backbones import build_backbone, register_backbone
from src.checkpoint import CheckpointError, checkpoint_step, load_checkpoint
from src.distributed import FSDP2Strategy, build_strategy, fsdp_units, shard
from src.ema import EMA
from src.module import DiffusionModule
from src.preemption import LastCheckpoint, requeue
from src.train import resume_checkpoint

DDPM = {"family": "ddpm", "schedule": "linear", "num_timesteps": 100, "prediction": "eps"}
TINY_UNET = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "preset": "tiny"}


# ---- which blocks become FSDP2 units ---------------------------------------------------------------------
class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4)]))
                                     for _ in range(3)])
        self.head = nn.Sequential(nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))


def test_fsdp_units_are_outermost_modulelist_elements():
    net = Blocks()
    units = fsdp_units(net)
    assert units == [*net.blocks, *net.head[0]]  # nested ModuleLists inside a unit are not split again


def test_fsdp_units_prefers_the_backbones_own_choice():
    net = Blocks()
    net.fsdp_units = lambda: [net.stem]
    assert fsdp_units(net) == [net.stem]


def test_fsdp_units_of_the_unet_are_its_levels():
    unet = build_backbone(TINY_UNET)
    units = fsdp_units(unet)
    assert units == [*unet.net.down_blocks, *unet.net.up_blocks]


def test_strategy_config_is_checked():
    assert build_strategy("ddp") == "ddp"
    assert isinstance(build_strategy({"name": "fsdp2", "activation_checkpointing": True}), FSDP2Strategy)
    with pytest.raises(ValueError, match="mixed_precision"):
        build_strategy({"name": "fsdp2", "mixed_precision": "fp8"})
    with pytest.raises(ValueError, match="Unknown trainer.strategy.name"):
        build_strategy({"name": "zero3"})


# ---- EMA on FSDP2 shards (a one-rank process group: the DTensor code path without launching ranks) -------
@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_ema_updates_sharded_weights_like_plain_ones(one_rank_group, activation_checkpointing):
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    net = build_backbone(TINY_UNET)
    plain_ema = EMA(net, decay=0.9, warmup=False)
    sharded_net = shard(EMA(net).module.requires_grad_(True), one_rank_group,
                        activation_checkpointing=activation_checkpointing, reshard_after_forward=False)
    sharded_ema = EMA(net, decay=0.9, warmup=False)
    shard(sharded_ema.module, one_rank_group, reshard_after_forward=False)
    assert all(isinstance(p, DTensor) for p in sharded_ema.module.parameters())

    x, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    with torch.no_grad():
        sharded_ema.module(x, t)  # leaves the units gathered (reshard_after_forward=False): update must cope
        for p, q in zip(net.parameters(), sharded_net.parameters()):
            p.add_(0.1)
            q.to_local().add_(0.1)
    plain_ema.update(net)
    sharded_ema.update(sharded_net)
    for a, b in zip(plain_ema.module.parameters(), sharded_ema.module.parameters()):
        torch.testing.assert_close(b.full_tensor(), a, rtol=0, atol=0)
    # checkpoint keys are those of the plain network, with or without activation checkpointing wrappers
    assert set(sharded_net.state_dict()) == set(net.state_dict())


# ---- per-rank data ---------------------------------------------------------------------------------------
def _epoch(size, world, start=0, count=None):
    streams = [ResumableSampler(size, seed=1, rank=r, world_size=world, start=start) for r in range(world)]
    count = count or streams[0].per_rank
    return [[k for _, k in zip(range(count), iter(s))] for s in streams]


def test_ranks_see_disjoint_samples_that_cover_the_epoch():
    ranks = _epoch(12, 3)
    assert sorted(k for r in ranks for k in r) == list(range(12))  # disjoint, and together the whole set
    # uneven data: padded by wrapping round, so every rank runs as many steps (no hang at the epoch's end)
    ranks = _epoch(10, 3)
    assert [len(r) for r in ranks] == [4, 4, 4]
    assert {k % 10 for r in ranks for k in r} == set(range(10))
    # the next epoch is a different permutation, keyed by epoch so augmentations differ too
    second = _epoch(12, 3, start=4)
    assert sorted(k for r in second for k in r) == list(range(12, 24)) and second != ranks
    # a rank restarted at position p continues its own stream exactly
    full = _epoch(10, 3, count=10)[1]
    assert _epoch(10, 3, start=3, count=7)[1] == full[3:]


class _Toy(DiffusionDataModule):
    data_shape = [1, 2, 2]

    def __init__(self, n_val):
        super().__init__(batch_size=2, num_workers=0)
        self.val_set = [{"x": torch.full((1, 2, 2), float(i))} for i in range(n_val)]


class _FakeTrainer:
    def __init__(self, rank, world):
        self.global_rank, self.world_size = rank, world


@pytest.mark.parametrize("n_val", [1, 5, 8])
def test_validation_batches_are_equal_across_ranks(n_val):
    counts, seen = [], set()
    for rank in range(3):
        dm = _Toy(n_val)
        dm.trainer = _FakeTrainer(rank, 3)
        batches = list(dm.val_dataloader())
        counts.append(len(batches))
        seen |= {int(v) for b in batches for v in b["x"][:, 0, 0, 0]}
    assert len(set(counts)) == 1  # no rank waits in a collective for another that ran out
    assert seen == set(range(n_val))


# ---- the global RNG is a function of (seed, step, rank) inside a training step ---------------------------
class _Dropout(nn.Module):
    def __init__(self, in_channels=1, **_):
        super().__init__()
        self.conv, self.drop = nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.Dropout(0.5)

    def forward(self, x, noise_level, cond=None):
        return self.drop(self.conv(x))


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_training_step_replays_dropout_exactly():
    register_backbone("_dropout_test", _Dropout)
    module = DiffusionModule(backbone={"name": "_dropout_test"}, diffusion=DDPM, data_shape=[1, 4, 4])
    batch = {"x": torch.randn(3, 1, 4, 4)}
    first = module.training_step(batch, 0)
    torch.rand(100)  # whatever ran in between (data loading, logging) must not matter
    assert torch.equal(module.training_step(batch, 0), first)


# ---- sharded checkpoints ---------------------------------------------------------------------------------
def _write_sharded(path, step=7):
    import torch.distributed.checkpoint as dcp

    module = DiffusionModule(backbone=TINY_UNET, diffusion=DDPM, data_shape=[1, 16, 16])
    dcp.save({"state_dict": module.state_dict()}, checkpoint_id=str(path), no_dist=True)
    torch.save({"global_step": step, "hyper_parameters": dict(module.hparams), "run_config": {"media": {}}},
               path / "meta.pt")
    return module


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sharded_checkpoint_consolidates_into_one_loadable_file(tmp_path):
    from src.consolidate import main
    from src.latent.stage import module_from_checkpoint

    folder = tmp_path / "last.ckpt"
    module = _write_sharded(folder)
    out = tmp_path / "model.ckpt"
    main([str(folder), str(out)])
    ckpt = load_checkpoint(out)
    assert {"state_dict", "hyper_parameters", "run_config"} <= set(ckpt) and ckpt["global_step"] == 7
    for key, value in module.state_dict().items():
        assert torch.equal(ckpt["state_dict"][key], value), key
    restored, _ = module_from_checkpoint(folder)  # the folder itself loads too (consolidated in memory)
    assert torch.equal(restored.ema.module.net.conv_in.conv.weight, module.ema.module.net.conv_in.conv.weight)
    assert checkpoint_step(folder) == 7 and checkpoint_step(out) == 7
    with pytest.raises(CheckpointError, match="meta.pt"):
        load_checkpoint(tmp_path)


# ---- where a run resumes from ----------------------------------------------------------------------------
def _cfg(**kw):
    from omegaconf import OmegaConf

    return OmegaConf.create({"ckpt_path": None, "resume": "auto", **kw})


def test_resume_picks_the_newest_own_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert resume_checkpoint(_cfg(), tmp_path) is None
    torch.save({"global_step": 10}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 12}, tmp_path / "checkpoints" / "step0000012.ckpt")  # newer than last.ckpt
    assert resume_checkpoint(_cfg(), tmp_path) == str(tmp_path / "checkpoints" / "step0000012.ckpt")
    torch.save({"global_step": 3}, tmp_path / "start.ckpt")
    # a requeued job repeats ckpt_path=...: its own newer checkpoint wins
    chosen = resume_checkpoint(_cfg(ckpt_path=str(tmp_path / "start.ckpt")), tmp_path)
    assert chosen == str(tmp_path / "checkpoints" / "step0000012.ckpt")
    assert resume_checkpoint(_cfg(resume="never"), tmp_path) is None
    with pytest.raises(CheckpointError, match="does not exist"):
        resume_checkpoint(_cfg(ckpt_path=str(tmp_path / "missing.ckpt")), tmp_path)


def test_sigusr1_only_raises_a_flag(tmp_path, monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    previous = signal.getsignal(signal.SIGUSR1)
    cb = LastCheckpoint(tmp_path / "last.ckpt")
    try:
        cb.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert cb.requested and not cb.preempted and not (tmp_path / "last.ckpt").exists()
        assert cb.stop_signal is None  # a preemption (requeue), not a stop
    finally:
        signal.signal(signal.SIGUSR1, previous)
        cb.uninstall()
    assert requeue() is False  # outside SLURM there is nothing to requeue


class _CountingStrategy:
    def __init__(self):
        self.calls = 0

    def reduce_boolean_decision(self, decision, all=True):
        self.calls += 1
        return decision


class _StepTrainer:
    def __init__(self, world_size):
        self.world_size, self.global_step, self.accumulate_grad_batches = world_size, 0, 1
        self.strategy, self.is_global_zero, self.should_stop = _CountingStrategy(), True, False
        self.saved = []

    def save_checkpoint(self, path, weights_only=False):
        self.saved.append((self.global_step, path))


@pytest.mark.parametrize("world_size", [1, 2])
def test_preemption_flag_is_agreed_only_every_few_steps(tmp_path, world_size):
    cb = LastCheckpoint(tmp_path / "last.ckpt", check_every_n_steps=5)
    trainer = _StepTrainer(world_size)
    for step in range(1, 13):
        trainer.global_step = step
        if step == 6:
            cb.requested = True
        cb.on_train_batch_end(trainer, None, None, None, step - 1)
        if trainer.should_stop:
            break
    # one process needs no collective and stops at once; ranks agree only on steps 5 and 10
    assert trainer.strategy.calls == (0 if world_size == 1 else 2)
    assert trainer.saved == [(6 if world_size == 1 else 10, tmp_path / "last.ckpt")]
    assert cb.preempted
