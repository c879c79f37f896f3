"""Loading is weights-only everywhere, whatever the environment says: crafted checkpoint files and sharded
folders whose unpickling would create a file are refused by src.sample, the reconstruction loader,
src.consolidate and src.train's resume (Lightning's CheckpointIO and the FSDP2 strategy), and the file never
appears. Also: inference ignores training's perf switches, and a bad ckpt_path is one sentence."""

from __future__ import annotations

import os
import pathlib
import pickle

import pytest
import torch

from src.checkpoint import AtomicCheckpointIO, CheckpointError, check_resumable, load_checkpoint
from src.config import to_plain
from src.safe_load import RefusedPickle, WeightsOnlyIgnored, read_metadata, safe_torch_load
from tests.helpers.background import Background, selected

FORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
COMMON = ["experiment=smoke", "logger=none", "datamodule.num_workers=0", "sampling.num=0",
          "trainer.accelerator=cpu", "trainer.max_steps=2"]
TINY = COMMON + ["datamodule.resolution=16", "datamodule.builtin_size=32"]


class System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class Open(System):
    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class Touch(System):
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


PAYLOADS = [System, Open, Touch]


@pytest.fixture(params=[False, True], ids=["plain-env", "force-no-weights-only"])
def env(request, monkeypatch):
    """Every refusal is checked with and without the variable that turns torch's default load unsafe."""
    if request.param:
        monkeypatch.setenv(FORCE, "1")
    else:
        monkeypatch.delenv(FORCE, raising=False)
    return request.param


def _image_cfg(compose_cfg, out, *extra):
    return compose_cfg(TINY + [f"paths.output_dir={out}", *extra])


def _module(cfg):
    from src.domains import build_datamodule
    from src.module import DiffusionModule

    dm = build_datamodule(to_plain(cfg.datamodule), seed=cfg.seed)
    return DiffusionModule(backbone=to_plain(cfg.backbone), diffusion=to_plain(cfg.diffusion),
                           data_shape=dm.data_shape, optim=to_plain(cfg.optim), ema=to_plain(cfg.ema),
                           seed=cfg.seed, val_buckets=cfg.val_buckets, perf=to_plain(cfg.get("perf")))


def _checkpoint(module, cfg, **extra) -> dict:
    """What src.train writes, minus the optimizer: enough for sampling and for the resume checks."""
    return {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 3,
            "run_config": to_plain(cfg), **extra}


@pytest.fixture(scope="module")
def small_ckpt():
    """A tiny real model's checkpoint dict (tensors, hyper-parameters, run config), built once."""
    from tests.conftest import compose

    cfg = compose(TINY + ["paths.output_dir=/tmp/unused"])
    return _checkpoint(_module(cfg), cfg)


def _crafted_file(tmp_path, small_ckpt, payload=System):
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({**small_ckpt, "callbacks": {"x": payload(marker)}}, path)
    return path, marker


# ---- the payloads are real: a full unpickler (or the environment variable) runs them -------------------------
@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_crafted_file_runs_its_payload_under_a_full_unpickler(tmp_path, small_ckpt, payload):
    path, marker = _crafted_file(tmp_path, small_ckpt, payload)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_environment_variable_turns_torchs_default_load_unsafe(tmp_path, small_ckpt, monkeypatch):
    monkeypatch.setenv(FORCE, "1")
    path, marker = _crafted_file(tmp_path, small_ckpt)
    with pytest.warns(UserWarning, match=FORCE):
        torch.load(path)  # what Lightning's CheckpointIO did: no weights_only argument
    assert marker.exists()


# ---- checkpoint files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", PAYLOADS)
def test_safe_torch_load_refuses_every_payload(tmp_path, small_ckpt, env, payload):
    path, marker = _crafted_file(tmp_path, small_ckpt, payload)
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(path)
    assert not marker.exists()
    torch.save(small_ckpt, tmp_path / "ok.ckpt")
    assert safe_torch_load(tmp_path / "ok.ckpt")["global_step"] == 3  # what src.train writes still loads


def test_a_torch_that_ignores_weights_only_loads_nothing(tmp_path, small_ckpt, monkeypatch):
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda f, **kw: real(f, **{**kw, "weights_only": False}))
    path, marker = _crafted_file(tmp_path, small_ckpt)
    with pytest.raises(WeightsOnlyIgnored):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="was not loaded"):
        load_checkpoint(path)
    assert not marker.exists()


def test_sample_refuses_a_crafted_checkpoint(tmp_path, small_ckpt, env):
    from src.sample import main

    path, marker = _crafted_file(tmp_path, small_ckpt)
    with pytest.raises(SystemExit, match=f"error: Checkpoint {path} cannot be loaded safely .*GLOBAL posix.system"):
        main([f"ckpt={path}", "num_samples=1", f"out={tmp_path / 'out'}"])
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_reconstruction_loader_refuses_a_crafted_checkpoint(tmp_path, small_ckpt, env):
    from src.reconstruct import Reconstructor

    path, marker = _crafted_file(tmp_path, small_ckpt, Open)
    with pytest.raises(CheckpointError, match="cannot be loaded safely .*GLOBAL io.open"):
        Reconstructor.from_checkpoint(path, device="cpu")
    assert not marker.exists()


def test_lightning_resume_reads_through_the_safe_loader(tmp_path, small_ckpt, env):
    """The strategy's own load (what ``trainer.fit(ckpt_path=)`` calls) goes through AtomicCheckpointIO."""
    import pytorch_lightning as pl

    path, marker = _crafted_file(tmp_path, small_ckpt, Touch)
    trainer = pl.Trainer(accelerator="cpu", logger=False, plugins=[AtomicCheckpointIO()],
                         enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        trainer.strategy.load_checkpoint(path)
    assert not marker.exists()
    torch.save(small_ckpt, tmp_path / "ok.ckpt")
    assert trainer.strategy.load_checkpoint(tmp_path / "ok.ckpt")["global_step"] == 3


def test_train_refuses_a_crafted_ckpt_path(compose_cfg, tmp_path, small_ckpt, env):
    from src.train import train

    path, marker = _crafted_file(tmp_path, small_ckpt)
    with pytest.raises(CheckpointError, match=f"Checkpoint {path} cannot be loaded safely"):
        train(_image_cfg(compose_cfg, tmp_path / "run", f"ckpt_path={path}"))
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # training did not go on


# ---- sharded folders -----------------------------------------------------------------------------------------
def _sharded(folder, small_ckpt, state_extra=None, meta_extra=None):
    import torch.distributed.checkpoint as dcp

    state = {"state_dict": {**small_ckpt["state_dict"], **(state_extra or {})}}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    meta = {k: v for k, v in small_ckpt.items() if k != "state_dict"}
    torch.save({**meta, **(meta_extra or {})}, folder / "meta.pt")
    return folder


@pytest.fixture
def crafted_folders(tmp_path, small_ckpt):
    """The three places a sharded folder holds a pickle: a byte entry, the DCP index, and meta.pt."""
    marker = tmp_path / "pwned"
    entry = _sharded(tmp_path / "entry.ckpt", small_ckpt, state_extra={"extra": System(marker)})
    index = _sharded(tmp_path / "index.ckpt", small_ckpt)
    (index / ".metadata").write_bytes(pickle.dumps(System(marker)))
    meta = _sharded(tmp_path / "meta.ckpt", small_ckpt, meta_extra={"x": Open(marker)})
    return {"entry": entry, "index": index, "meta": meta}, marker


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcps_own_readers_run_the_payloads(crafted_folders):
    """Control: what the project used before (DCP's reader and _EmptyStateDictLoadPlanner) runs both pickles."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    folders, marker = crafted_folders
    with pytest.raises(AttributeError):  # the payload has run by the time DCP finds it is no index
        FileSystemReader(folders["index"]).read_metadata()
    assert marker.exists()
    marker.unlink()
    _load_state_dict({}, storage_reader=FileSystemReader(folders["entry"]),
                     planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}), no_dist=True)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("where", ["entry", "index", "meta"])
def test_consolidate_and_sample_refuse_crafted_folders(crafted_folders, tmp_path, env, where):
    from src.consolidate import main as consolidate
    from src.sample import main as sample

    folders, marker = crafted_folders
    folder = folders[where]
    with pytest.raises(SystemExit, match=f"error: Checkpoint {folder}.* cannot be loaded safely"):
        consolidate([str(folder), str(tmp_path / "out.ckpt")])
    with pytest.raises(SystemExit, match="cannot be loaded safely"):
        sample([f"ckpt={folder}", "num_samples=1", f"out={tmp_path / 'samples'}"])
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_index_is_read_without_dcps_unpickler(tmp_path, small_ckpt, env):
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    folder = _sharded(tmp_path / "ok.ckpt", small_ckpt, state_extra={"note": {"lr": 0.1}})
    entries = read_metadata(folder).state_dict_metadata
    assert isinstance(entries["state_dict.note.lr"], BytesStorageMetadata)
    weight = entries["state_dict.backbone.net.conv_in.conv.weight"]
    assert isinstance(weight, TensorStorageMetadata)
    assert tuple(weight.size) == tuple(small_ckpt["state_dict"]["backbone.net.conv_in.conv.weight"].shape)
    # plain byte entries (like the optimizer's param_groups) still load, weights-only
    restored = load_checkpoint(folder)
    assert torch.equal(restored["state_dict"]["backbone.net.conv_in.conv.weight"],
                       small_ckpt["state_dict"]["backbone.net.conv_in.conv.weight"])
    (folder / ".metadata").write_bytes(pickle.dumps({"not": "an index"}))
    with pytest.raises(RefusedPickle, match="not a DCP checkpoint index"):
        read_metadata(folder)


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp_resume_refuses_a_crafted_optimizer_entry(one_rank_group, tmp_path, small_ckpt, env):
    """``FSDP2Strategy.load_checkpoint``'s sharded path: the optimizer's param_groups are byte entries."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from src.distributed import load_sharded

    def fresh():
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        return net, torch.optim.AdamW(net.parameters(), lr=0.5)

    def write(folder, lr):
        net, opt = fresh()
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        optim_state = get_optimizer_state_dict(net, opt)
        optim_state["param_groups"][0]["lr"] = lr
        dcp.save({"state_dict": get_model_state_dict(net), "optimizer_0": optim_state}, checkpoint_id=str(folder))
        torch.save({"global_step": 4}, folder / "meta.pt")
        return net

    marker = tmp_path / "pwned"
    saved = write(tmp_path / "ok.ckpt", 0.25)
    net, opt = fresh()
    assert load_sharded(tmp_path / "ok.ckpt", net, [opt]) == {"global_step": 4}
    assert opt.param_groups[0]["lr"] == 0.25 and torch.equal(net[0].weight, saved[0].weight)

    write(tmp_path / "crafted.ckpt", System(marker))
    net, opt = fresh()
    with pytest.raises(CheckpointError, match="cannot be loaded safely .*optimizer_0.param_groups.0.lr"):
        load_sharded(tmp_path / "crafted.ckpt", net, [opt])
    assert not marker.exists()


# ---- inference ignores training's perf switches ----------------------------------------------------------------
def test_a_compiled_run_samples_without_compiling(compose_cfg, tmp_path):
    from src.latent.stage import module_from_checkpoint
    from src.sample import main

    cfg = _image_cfg(compose_cfg, tmp_path, "perf.compile=true", "perf.channels_last=true")
    trained = _module(cfg)
    assert trained.backbone._compiled_call_impl is not None  # the training module is compiled (lazily)
    torch.save(_checkpoint(trained, cfg), tmp_path / "compiled.ckpt")
    module, _ = module_from_checkpoint(tmp_path / "compiled.ckpt")
    assert module.backbone._compiled_call_impl is None and module.ema.module._compiled_call_impl is None
    assert module.memory_format is None
    main([f"ckpt={tmp_path / 'compiled.ckpt'}", "num_samples=2", "steps=2", f"out={tmp_path / 'drawn'}"])
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 2


# ---- a ckpt_path that is not this run's: one sentence ----------------------------------------------------------
def test_truncated_ckpt_path_is_one_sentence(compose_cfg, tmp_path, small_ckpt):
    from src.train import train

    whole = tmp_path / "whole.ckpt"
    torch.save(small_ckpt, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        train(_image_cfg(compose_cfg, tmp_path / "run", f"ckpt_path={cut}"))
    message = str(err.value)
    assert message.startswith(f"Checkpoint {cut} cannot be read") and "truncated" in message
    assert "ckpt_path=" in message and "\n" not in message and message.count(". ") == 0


def test_other_domain_ckpt_path_is_one_sentence(compose_cfg, tmp_path):
    from src.train import train

    audio = compose_cfg(COMMON + ["domain=audio", f"paths.output_dir={tmp_path / 'audio'}"])
    torch.save(_checkpoint(_module(audio), audio), tmp_path / "audio.ckpt")
    with pytest.raises(CheckpointError) as err:
        train(_image_cfg(compose_cfg, tmp_path / "run", f"ckpt_path={tmp_path / 'audio.ckpt'}"))
    message = str(err.value)
    assert message.startswith(f"Checkpoint {tmp_path / 'audio.ckpt'} does not fit this run's model, trained "
                              "with domain=audio (")
    assert "\n" not in message and message.replace("e.g. ", "").count(". ") == 0


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_resume_check_passes_the_runs_own_checkpoints(compose_cfg, tmp_path, small_ckpt):
    cfg = _image_cfg(compose_cfg, tmp_path)
    model = _module(cfg)
    torch.save(small_ckpt, tmp_path / "own.ckpt")
    check_resumable(tmp_path / "own.ckpt", model)
    check_resumable(_sharded(tmp_path / "own_sharded.ckpt", small_ckpt), model)
    other = {k: v for k, v in small_ckpt["state_dict"].items() if not k.startswith("ema.")}
    folder = _sharded(tmp_path / "partial.ckpt", {**small_ckpt, "state_dict": other})
    with pytest.raises(CheckpointError, match="does not fit this run's model.*ema.*absent in the checkpoint"):
        check_resumable(folder, model)


@pytest.fixture(scope="module", autouse=True)
def two_rank_resume(request, tmp_path_factory):
    """``src.train trainer=fsdp`` on two ranks resuming a crafted folder, started when the module begins (the
    in-process tests run meanwhile): a folder whose shapes fit but whose optimizer param_groups entry carries a
    payload."""
    if not selected(request, "test_two_rank_fsdp_resume_refuses_a_crafted_folder"):
        yield None
        return
    import sys
    import warnings

    import torch.distributed.checkpoint as dcp

    from tests.conftest import compose
    from tests.helpers.dist import REPO, clean_env
    from tests.helpers.dist import TINY as DIST_TINY

    base = tmp_path_factory.mktemp("two_rank_resume")
    overrides = DIST_TINY + ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
                             "trainer.max_steps=4", "optim.total_steps=4"]
    cfg = compose(overrides + [f"paths.output_dir={base / 'unused'}"])
    module = _module(cfg)
    optimizer = module.configure_optimizers()["optimizer"]
    for p in module.backbone.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    names = {p: n for n, p in module.named_parameters()}
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    marker = base / "pwned"
    group["lr"] = System(marker)
    optim_state = {"state": {names[p]: s for p, s in optimizer.state.items()},  # keyed by name, as FSDP2 saves
                   "param_groups": [{**group, "params": [names[p] for p in optimizer.param_groups[0]["params"]]}]}
    folder = base / "crafted.ckpt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.save({"state_dict": module.state_dict(), "optimizer_0": optim_state}, checkpoint_id=str(folder),
                 no_dist=True)
    torch.save(_checkpoint(module, cfg), folder / "meta.pt")
    with Background(timeout=600) as started:
        started.start("train", [sys.executable, "-m", "src.train", *overrides, f"paths.output_dir={base / 'run'}",
                                f"ckpt_path={folder}"], clean_env(**{FORCE: "1"}), REPO)
        yield started, folder, marker


@pytest.mark.slow
def test_two_rank_fsdp_resume_refuses_a_crafted_folder(two_rank_resume):
    """The whole path: ``src.train trainer=fsdp`` on two ranks, a folder whose shapes fit but whose optimizer
    param_groups entry carries a payload; both ranks stop with the sentence, none runs it."""
    started, folder, marker = two_rank_resume
    proc = started.result("train")
    assert proc.returncode != 0
    refused = [ln for ln in proc.stderr.splitlines()
               if ln.startswith(f"error: Checkpoint {folder} cannot be loaded safely")]
    assert len(refused) == 2 and "optimizer_0.param_groups.0.lr" in refused[0], proc.stderr[-3000:]
    assert not marker.exists()
