"""Latent diffusion: the autoencoder's latent space, the scale factor, latent checkpoints and exact resume of
both stages (stage=autoencoder, then latent.autoencoder=PATH)."""

from pathlib import Path

import pytest
import torch

from src.checkpoint import CheckpointError
from src.errors import ConfigError
from src.latent.diffusion import LatentDiffusionModule
from src.latent.networks import autoencoder_kwargs, latent_shape
from src.latent.space import LatentSpace, file_sha256
from src.latent.stage import module_from_checkpoint
from src.train import train
from tests.conftest import compose

# 16x16 images, tiny networks: the autoencoder's factor 4 makes 3x4x4 latents
TINY = ["experiment=smoke", "logger=none", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "datamodule.resolution=16", "datamodule.builtin_size=64", "datamodule.batch_size=4", "sampling.num=0",
        "checkpoint.keep=-1", "trainer.limit_val_batches=1"]
AE = ["stage=autoencoder", "loss.kl_weight=1e-3"]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _arch(dims: int) -> dict:
    return autoencoder_kwargs({"preset": "tiny", "spatial_dims": dims, "in_channels": 1})


@pytest.fixture(scope="module")
def autoencoder_ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ae")
    train(compose(TINY + AE + [f"paths.output_dir={out}", "trainer.max_steps=6", "checkpoint.every_n_steps=6"]))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("dims,size", [(2, 16), (3, 8)])
def test_encode_decode_shapes(dims, size):
    space = LatentSpace(_arch(dims), [1, *([size] * dims)], scale_factor=0.5)
    x = torch.rand(2, 1, *([size] * dims)) * 2 - 1
    z = space.encode(x, torch.Generator().manual_seed(0))
    assert z.shape == (2, 3, *([size // 4] * dims))
    assert space.decode(z).shape == x.shape
    # the posterior mean scales linearly with the factor
    torch.testing.assert_close(space.encode(x), space.encode_unscaled(x) * 0.5)


def test_latent_shape_refuses_sides_the_autoencoder_cannot_halve():
    with pytest.raises(ConfigError, match="multiple of 4"):
        latent_shape(_arch(2), [1, 18, 16])


def test_scale_factor_is_one_over_the_std_of_the_latents():
    torch.manual_seed(0)
    space = LatentSpace(_arch(2), [1, 16, 16])
    batches = [torch.rand(3, 1, 16, 16) * 2 - 1 for _ in range(2)]
    assert not space.scaled
    factor = space.fit_scale(batches)  # posterior means: deterministic
    pooled = torch.cat([space.encode_unscaled(b).flatten() for b in batches])
    assert factor == pytest.approx(1 / pooled.std().item(), rel=1e-5)
    scaled = torch.cat([space.encode(b).flatten() for b in batches])
    assert scaled.std().item() == pytest.approx(1.0, rel=1e-5)


def test_latent_checkpoint_round_trip(autoencoder_ckpt, tmp_path):
    out = tmp_path / "ld"
    train(compose(TINY + [f"paths.output_dir={out}", "trainer.max_steps=4", "checkpoint.every_n_steps=4",
                          f"latent.autoencoder={autoencoder_ckpt}"]))
    ckpt = _load(out / "checkpoints" / "last.ckpt")
    ae = _load(autoencoder_ckpt)
    factor = float(ckpt["state_dict"]["latent.scale_factor"])
    assert factor > 0
    latent_hp = ckpt["hyper_parameters"]["latent"]
    assert latent_hp["source"]["sha256"] == file_sha256(autoencoder_ckpt)
    assert ckpt["hyper_parameters"]["backbone"]["in_channels"] == 3
    assert latent_hp["arch"] == ae["autoencoder_arch"] and latent_hp["arch"]["channels"] == [8, 16, 16]
    # the checkpoint carries the autoencoder's (EMA) weights, frozen: equal to stage 1's
    for k, v in ae["state_dict"].items():
        if k.startswith("ema.module."):
            torch.testing.assert_close(ckpt["state_dict"]["latent.autoencoder." + k[len("ema.module."):]], v)

    module, _ = module_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert isinstance(module, LatentDiffusionModule)
    assert module.data_shape == [3, 4, 4] and float(module.latent.scale_factor) == factor
    x = module.sample(2, steps=3, seed=0)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    # decoding is the autoencoder's decoder at 1 / factor, nothing else
    lat = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(module.decode(lat), module.latent.autoencoder.decode(lat / factor))


def test_sample_cli_writes_data_shaped_png_without_the_autoencoder_file(autoencoder_ckpt, tmp_path):
    from PIL import Image

    from src.sample import main

    ae_copy = tmp_path / "ae.ckpt"
    ae_copy.write_bytes(autoencoder_ckpt.read_bytes())
    out = tmp_path / "ld"
    train(compose(TINY + [f"paths.output_dir={out}", "trainer.max_steps=2", "checkpoint.every_n_steps=2",
                          f"latent.autoencoder={ae_copy}"]))
    ae_copy.unlink()  # the diffusion checkpoint alone decodes
    main([f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "num_samples=2", "steps=3", "seed=0",
          f"out={tmp_path / 'samples'}"])
    written = sorted((tmp_path / "samples").glob("*.png"))
    assert len(written) == 2 and Image.open(written[0]).size == (16, 16)


def test_missing_or_wrong_autoencoder_is_one_clear_error(autoencoder_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; pass the checkpoints/last.ckpt of a"):
        train(compose(TINY + [f"paths.output_dir={tmp_path / 'a'}", f"latent.autoencoder={tmp_path / 'no.ckpt'}"]))
    pixel = tmp_path / "pixel"
    train(compose(TINY + [f"paths.output_dir={pixel}", "trainer.max_steps=1"]))
    with pytest.raises(CheckpointError, match="is not an autoencoder checkpoint"):
        train(compose(TINY + [f"paths.output_dir={tmp_path / 'b'}",
                              f"latent.autoencoder={pixel / 'checkpoints' / 'last.ckpt'}"]))
    with pytest.raises(ConfigError, match="drop latent.autoencoder"):
        train(compose(TINY + AE + [f"paths.output_dir={tmp_path / 'c'}", f"latent.autoencoder={autoencoder_ckpt}"]))
    with pytest.raises(CheckpointError, match="stage=autoencoder checkpoint, which does not sample"):
        module_from_checkpoint(autoencoder_ckpt)


def test_resume_with_another_autoencoder_is_refused(autoencoder_ckpt, tmp_path):
    other = tmp_path / "other_ae"
    train(compose(TINY + AE + [f"paths.output_dir={other}", "trainer.max_steps=2", "seed=1"]))
    run = tmp_path / "ld"
    args = TINY + [f"paths.output_dir={run}", "checkpoint.every_n_steps=2"]
    train(compose(args + ["trainer.max_steps=2", f"latent.autoencoder={autoencoder_ckpt}"]))
    with pytest.raises(CheckpointError, match="pass the same autoencoder checkpoint to resume"):
        train(compose(args + ["trainer.max_steps=4", f"latent.autoencoder={other / 'checkpoints' / 'last.ckpt'}"]))


def test_latent_checkpoint_without_autoencoder_weights_is_refused(autoencoder_ckpt, tmp_path):
    out = tmp_path / "ld"
    train(compose(TINY + [f"paths.output_dir={out}", "trainer.max_steps=1", f"latent.autoencoder={autoencoder_ckpt}"]))
    ckpt = _load(out / "checkpoints" / "last.ckpt")
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("latent.")}
    stripped = tmp_path / "stripped.ckpt"
    torch.save(ckpt, stripped)
    with pytest.raises(CheckpointError, match="without its autoencoder's weights"):
        module_from_checkpoint(stripped)


def test_reconstruction_refuses_a_latent_checkpoint(autoencoder_ckpt, tmp_path):
    from src.tools.reconstruction.reconstructor import Reconstructor

    out = tmp_path / "ld"
    train(compose(TINY + [f"paths.output_dir={out}", "trainer.max_steps=1", f"latent.autoencoder={autoencoder_ckpt}"]))
    with pytest.raises(CheckpointError, match="trained without latent.autoencoder"):
        Reconstructor.from_checkpoint(out / "checkpoints" / "last.ckpt", device="cpu")


def _assert_same_runs(a: Path, b: Path, steps: int):
    ca, cb = _load(a / "checkpoints" / "last.ckpt"), _load(b / "checkpoints" / "last.ckpt")
    assert ca["global_step"] == cb["global_step"] == steps
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert int(cb["state_dict"]["ema.num_updates"]) == steps
    for k, v in ca["state_dict"].items():
        torch.testing.assert_close(cb["state_dict"][k], v, atol=1e-6, rtol=0, msg=f"mismatch in {k}")
    assert len(ca["optimizer_states"]) == len(cb["optimizer_states"])
    for oa, ob in zip(ca["optimizer_states"], cb["optimizer_states"]):
        for i in oa["state"]:
            torch.testing.assert_close(ob["state"][i]["exp_avg_sq"], oa["state"][i]["exp_avg_sq"], atol=1e-9,
                                       rtol=1e-6)
    for sa, sb in zip(ca["lr_schedulers"], cb["lr_schedulers"]):
        assert sa["last_epoch"] == sb["last_epoch"] == steps
    return ca


def test_autoencoder_resume_matches_uninterrupted_run(tmp_path):
    # the discriminator joins at step 3, before the step-4 checkpoint, so both optimizers are resumed
    args = TINY + AE + ["trainer.max_steps=8", "checkpoint.every_n_steps=4", "trainer.val_check_interval=4",
                        "loss.adversarial_weight=0.1", "loss.adversarial_warmup_steps=3",
                        "discriminator.num_layers=1"]
    a, b = tmp_path / "a", tmp_path / "b"
    res_a = train(compose(args + [f"paths.output_dir={a}"]))
    res_b = train(compose(args + [f"paths.output_dir={b}", f"ckpt_path={a / 'checkpoints' / 'step0000004.ckpt'}"]))
    ca = _assert_same_runs(a, b, 8)
    assert len(ca["optimizer_states"]) == 2 and any(k.startswith("discriminator.") for k in ca["state_dict"])
    # validation scores the EMA reconstructions; the resumed run's are the same numbers
    for key in ("val/loss", "val/psnr", "val/ssim", "train/adv_d"):
        assert abs(res_a["metrics"][key] - res_b["metrics"][key]) < 1e-5, key
    assert 0 < res_a["metrics"]["val/psnr"] < 100 and -1 <= res_a["metrics"]["val/ssim"] <= 1


def test_latent_resume_matches_uninterrupted_run(autoencoder_ckpt, tmp_path):
    args = TINY + ["trainer.max_steps=8", "checkpoint.every_n_steps=4", "trainer.val_check_interval=4",
                   f"latent.autoencoder={autoencoder_ckpt}"]
    a, b = tmp_path / "a", tmp_path / "b"
    res_a = train(compose(args + [f"paths.output_dir={a}"]))
    res_b = train(compose(args + [f"paths.output_dir={b}", f"ckpt_path={a / 'checkpoints' / 'step0000004.ckpt'}"]))
    _assert_same_runs(a, b, 8)
    for key in ("train/loss", "val/loss"):
        assert abs(res_a["metrics"][key] - res_b["metrics"][key]) < 1e-5, key


def test_autoencoder_stage_builds_1d_for_audio_and_refuses_bad_latent_options():
    from src.config import to_plain
    from src.latent.stage import build_model

    model = build_model(to_plain(compose(["domain=audio", "stage=autoencoder", "logger=none"])), [1, 8000])
    assert model.arch["kind"] == "waveform"  # audio: the 1D waveform autoencoder (tests/stages/test_audio_latent.py)
    arch = _arch(2)
    for bad in ({"scale_factor": -1.0}, {"scale_batches": 0}):
        with pytest.raises(ConfigError, match="latent.scale_"):
            LatentDiffusionModule(backbone={"name": "unet", "spatial_dims": 2, "preset": "tiny"},
                                  diffusion={"family": "ddpm"}, data_shape=[1, 16, 16], latent={"arch": arch, **bad})


def test_autoencoder_nonfinite_step_stops_the_run_with_finite_checkpoints(tmp_path, caplog):
    import logging

    out = tmp_path / "ae"
    with caplog.at_level(logging.ERROR, logger="src.latent.autoencoder"):
        res = train(compose(TINY + AE + [f"paths.output_dir={out}", "optim.lr=1e30", "trainer.max_steps=8",
                                         "checkpoint.every_n_steps=1", "trainer.val_check_interval=8"]))
    assert res["global_step"] < 8
    assert any("Non-finite loss or gradient at step 2" in r.getMessage() and "stopping" in r.getMessage()
               for r in caplog.records)
    for path in sorted((out / "checkpoints").glob("*.ckpt")):
        for k, v in _load(path)["state_dict"].items():
            assert not v.is_floating_point() or torch.isfinite(v).all(), f"{path.name}: {k}"


class _Features(torch.nn.Module):
    """A tiny random conv net returning two feature maps: stands in for a pretrained perceptual network."""

    def __init__(self, dims: int, channels: int = 1):
        super().__init__()
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.a, self.b = conv(channels, 4, 3, padding=1), conv(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return [a, torch.relu(self.b(a))]


def _scripted(tmp_path: Path, dims: int, channels: int = 1) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"features{dims}d_{channels}ch.pt"
    torch.jit.save(torch.jit.script(_Features(dims, channels)), str(path))
    return path


@pytest.mark.parametrize("dims,net_dims,slices", [(2, 2, False), (3, 3, False), (3, 2, True)])
def test_perceptual_distance_of_a_scripted_network(tmp_path, dims, net_dims, slices):
    from src.latent.networks import build_perceptual

    shape = [1, *([8] * dims)]
    distance = build_perceptual(str(_scripted(tmp_path, net_dims)), shape, slices=slices)
    torch.manual_seed(1)
    x = torch.rand(2, *shape) * 2 - 1
    assert float(distance(x, x.clone())) == 0.0
    y = x + 0.3 * torch.randn_like(x)
    d = distance(y, x)
    assert float(d) > 0
    # LPIPS with unit layer weights: channel-normalised maps, squared difference summed over channels, averaged
    fx, fy = distance.features(x), distance.features(y)
    assert len(fx) == 2 and fx[0].shape[0] == (2 * 8 if slices else 2)  # slices: every depth slice is an item
    manual = sum((b / b.norm(dim=1, keepdim=True).add(1e-10) - a / a.norm(dim=1, keepdim=True).add(1e-10))
                 .square().sum(1).mean() for a, b in zip(fx, fy))
    torch.testing.assert_close(d, manual)


def test_perceptual_loss_trains_the_autoencoder_and_stays_out_of_checkpoints(tmp_path):
    from src.latent.autoencoder import AutoencoderModule

    weights = _scripted(tmp_path, 2)
    loss = {"perceptual_weight": 1.0, "perceptual_network": str(weights)}
    module = AutoencoderModule(autoencoder={"preset": "tiny"}, data_shape=[1, 16, 16], loss=loss)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    recon, _, _ = module.autoencoder(x)
    module.perceptual_distance(x.device)(recon, x).backward()
    grads = [p.grad for p in module.autoencoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0  # the gradient reaches the autoencoder
    assert all(p.grad is None for p in module.perceptual_distance(x.device).net.parameters())  # frozen
    out = tmp_path / "ae"  # the built-in images are RGB: a 3-channel network
    res = train(compose(TINY + AE + [f"paths.output_dir={out}", "trainer.max_steps=2", "loss.perceptual_weight=0.5",
                                     f"loss.perceptual_network={_scripted(tmp_path, 2, channels=3)}"]))
    assert res["metrics"]["train/perceptual"] > 0
    ckpt = _load(out / "checkpoints" / "last.ckpt")
    assert not any("perceptual" in k or k.startswith(("a.", "b.")) for k in ckpt["state_dict"])


def test_perceptual_loss_bad_weights_path_is_one_clear_error(tmp_path):
    from src.latent.networks import build_perceptual

    shape = [1, 16, 16]
    with pytest.raises(ConfigError, match="needs loss.perceptual_network=PATH"):
        build_perceptual(None, shape)
    with pytest.raises(ConfigError, match=r"loss.perceptual_network=\S*missing.pt is not a file"):
        build_perceptual(str(tmp_path / "missing.pt"), shape)
    junk = tmp_path / "junk.pt"
    torch.save({"w": torch.zeros(2)}, junk)  # a state dict, not a TorchScript network
    with pytest.raises(ConfigError, match=r"loss.perceptual_network=\S*junk.pt cannot be loaded as a TorchScript"):
        build_perceptual(str(junk), shape)
    with pytest.raises(ConfigError, match=r"fails on a batch of the data's shape \[1, 1, 16, 16\]"):
        build_perceptual(str(_scripted(tmp_path, 2, channels=3)), shape)  # a 3-channel network, 1-channel data
    with pytest.raises(ConfigError, match="perceptual_network=.*is not a file"):
        train(compose(TINY + AE + [f"paths.output_dir={tmp_path / 'run'}", "loss.perceptual_weight=0.1",
                                   f"loss.perceptual_network={tmp_path / 'missing.pt'}"]))


@pytest.mark.slow
def test_mri_volume_stage1_stage2_and_sample_nifti(tmp_path):
    """Both stages on 3D MRI phantoms, then src.sample writes NIfTI volumes of the data's shape."""
    import nibabel as nib

    from src.sample import main

    mri = ["domain=mri", "experiment=smoke", "logger=none", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", "datamodule.shape=[16,16,16]", "datamodule.builtin_size=6",
           "datamodule.batch_size=2", "trainer.max_steps=3", "trainer.val_check_interval=3",
           "checkpoint.every_n_steps=3", "sampling.every_n_steps=3", "sampling.num=2"]
    ae, ld = tmp_path / "ae", tmp_path / "ld"
    train(compose(mri + ["stage=autoencoder", f"paths.output_dir={ae}"]))
    pairs = sorted((ae / "samples").glob("step0000003_*.nii.gz"))
    kinds = [p.name.split("_")[1] for p in pairs]  # one pair per validation item (one phantom held out here)
    assert kinds.count("input") == kinds.count("recon") >= 1 and len(kinds) == 2 * kinds.count("input")
    assert nib.load(pairs[-1]).shape == (16, 16, 16)
    # the 3D autoencoder is fully convolutional: stage 2 may diffuse larger volumes than stage 1's crops
    res = train(compose(mri + [f"paths.output_dir={ld}", f"latent.autoencoder={ae / 'checkpoints' / 'last.ckpt'}",
                               "datamodule.shape=[32,32,32]", "metrics.num_samples=2"]))
    assert res["global_step"] == 3 and "val/frechet_stats" in res["metrics"]
    assert nib.load(sorted((ld / "samples").glob("*.nii.gz"))[0]).shape == (32, 32, 32)
    main([f"ckpt={ld / 'checkpoints' / 'last.ckpt'}", "num_samples=2", "steps=3", "seed=0", f"out={tmp_path / 's'}"])
    written = sorted((tmp_path / "s").glob("*.nii.gz"))
    assert len(written) == 2 and nib.load(written[0]).shape == (32, 32, 32)


def _two_class_folder(root: Path, per_class: int = 4) -> None:
    """16x16 grey PNGs in two class subfolders: dark noise and bright noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, lo in (("dark", 0), ("bright", 160)):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(lo, lo + 96, (16, 16), dtype=np.uint8)).save(root / name / f"{k}.png")


def test_class_conditional_latent_diffusion_samples_a_grid_per_class(tmp_path):
    """cond=class in latent space: labels reach the latent backbone, src.sample label=all decodes a grid."""
    from PIL import Image

    from src.sample import main

    _two_class_folder(tmp_path / "data")
    data = ["domain=image", f"datamodule.path={tmp_path / 'data'}", "datamodule.channels=1", "cond=class"]
    ae, ld = tmp_path / "ae", tmp_path / "ld"
    train(compose(TINY + data + AE + [f"paths.output_dir={ae}", "trainer.max_steps=2"]))
    train(compose(TINY + data + [f"paths.output_dir={ld}", "trainer.max_steps=2",
                                 f"latent.autoencoder={ae / 'checkpoints' / 'last.ckpt'}"]))
    ckpt = ld / "checkpoints" / "last.ckpt"
    hp = _load(ckpt)["hyper_parameters"]
    assert hp["cond"]["classes"] == ["bright", "dark"] and hp["latent"]["arch"]["in_channels"] == 1
    module, _ = module_from_checkpoint(ckpt)
    assert isinstance(module, LatentDiffusionModule) and module.num_classes == 2
    # the label changes the sample (same seed, same noise): the class embedding is used in latent space
    a, b = (module.sample(1, steps=2, seed=0, label=torch.tensor([c]), guidance=2.0) for c in (0, 1))
    assert a.shape == (1, 1, 16, 16) and not torch.allclose(a, b)
    main([f"ckpt={ckpt}", "label=all", "guidance=2", "num_samples=2", "steps=2", "seed=0", "device=cpu",
          f"out={tmp_path / 'drawn'}"])
    names = sorted(p.name for p in (tmp_path / "drawn").glob("sample_c*.png"))
    assert names == [f"sample_c{c:03d}_{k:05d}.png" for c in range(2) for k in range(2)]
    assert Image.open(tmp_path / "drawn" / "sample_c000_00000.png").size == (16, 16)
    grid = Image.open(tmp_path / "drawn" / "sample_grid.png")
    assert grid.size == (2 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # two per row, one row per class, data-sized tiles


def test_stage1_reduces_training_values_over_ranks_on_logging_steps_only():
    """One all-reduce of all training values, on the logger's steps only; sync_dist never set (Lightning
    refuses a change between calls, and sync_dist=True would all-reduce every value on every step)."""
    from types import SimpleNamespace

    from src.latent.autoencoder import AutoencoderModule

    module = AutoencoderModule(autoencoder={"preset": "tiny"}, data_shape=[1, 16, 16])
    reduced, logged = [], {}

    def reduce(t, reduce_op):
        assert reduce_op == "mean"
        reduced.append(t.clone())
        return t / 2  # what a mean with a zero-valued second rank gives

    connector = SimpleNamespace(should_update_logs=False)
    module._trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(reduce=reduce),
                                      _logger_connector=connector)
    module.log = lambda name, value, **kw: logged.__setitem__(name, (float(value), kw))
    values = {"train/loss": torch.tensor(1.0), "train/l1": torch.tensor(4.0, requires_grad=True)}
    module._log_train(values, batch_size=4)
    assert reduced == [] and logged["train/l1"][0] == 4.0  # not a logging step: no collective
    connector.should_update_logs = True
    module._log_train(values, batch_size=4)
    assert len(reduced) == 1 and reduced[0].tolist() == [1.0, 4.0]  # one collective for all values
    assert logged["train/loss"][0] == 0.5 and logged["train/l1"][0] == 2.0
    assert all(not kw.get("sync_dist", False) for _, kw in logged.values())


def _stage1_state(path: Path) -> dict:
    """Weights, EMA, both optimizers' moments, schedules and step of a stage-1 checkpoint file or sharded folder."""
    if not path.is_dir():
        ckpt = _load(path)
        return {"state_dict": ckpt["state_dict"], "global_step": ckpt["global_step"],
                "lr_schedulers": ckpt["lr_schedulers"],
                "optimizers": [o["state"] for o in ckpt["optimizer_states"]]}
    from src.consolidate import load_shards

    meta = _load(path / "meta.pt")
    shards = load_shards(path, {"state_dict", "optimizer_0", "optimizer_1"})
    optimizers = []
    for i in range(2):
        opt = shards.get(f"optimizer_{i}")
        assert opt is not None, f"{path}: no optimizer_{i} in the shards"
        names = [n for g in opt["param_groups"] for n in g["params"]]  # keyed by name; files key by position
        optimizers.append({j: opt["state"][n] for j, n in enumerate(names)})
    return {"state_dict": shards["state_dict"], "global_step": meta["global_step"],
            "lr_schedulers": meta["lr_schedulers"], "optimizers": optimizers}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rank_autoencoder_with_discriminator_under_fsdp_and_ddp_then_latent(tmp_path):
    """Two CPU ranks (gloo). trainer=fsdp (FSDP2) for stage 1 with the discriminator: sharded checkpoints with
    both optimizers; resuming the step-4 checkpoint to step 8 equals 8 straight steps; stage 2 (under FSDP2 too)
    then reads the sharded autoencoder and draws samples. trainer=ddp for stage 1 with the discriminator, which
    is unused in warm-up (src/latent/autoencoder.py: the only DDP-specific code of either stage; stage 2's
    multi-rank code goes through the strategy, whichever it is). Independent runs start together, in two rounds."""
    from src.checkpoint import load_checkpoint
    from tests.helpers.dist import TINY as DIST
    from tests.helpers.dist import max_abs_diff, run_train_together

    n = 8
    two = ["trainer.accelerator=cpu", "trainer.devices=2"]
    stage1 = ["stage=autoencoder", "loss.kl_weight=1e-3", "loss.adversarial_weight=0.1", "discriminator.num_layers=1",
              "sampling.num=2"]
    common = [*DIST, "trainer=fsdp", *two, *stage1, "loss.adversarial_warmup_steps=3", f"optim.total_steps={n}",
              f"checkpoint.every_n_steps={n // 2}"]
    straight, resumed, ld, ddp = tmp_path / "straight", tmp_path / "resumed", tmp_path / "ld", tmp_path / "ddp"
    # round 1: the straight FSDP run (its step-4 checkpoint is the resume point) and DDP's stage 1
    run_train_together([*common, f"trainer.max_steps={n}", f"paths.output_dir={straight}"],
                       [*DIST, "trainer=ddp", *two, *stage1, "loss.adversarial_warmup_steps=2", "trainer.max_steps=4",
                        "checkpoint.every_n_steps=4", f"paths.output_dir={ddp}"], timeout=400)
    ckpt = _load(ddp / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and len(ckpt["optimizer_states"]) == 2
    assert all(len(o["state"]) > 0 for o in ckpt["optimizer_states"])  # the discriminator stepped after warm-up
    assert len(list((ddp / "samples").glob("step0000004_recon_*.png"))) == 2
    half_ckpt = straight / "checkpoints" / f"step{n // 2:07d}.ckpt"
    half = _stage1_state(half_ckpt)
    assert half["global_step"] == n // 2 and (half_ckpt / "meta.pt").is_file()  # sharded: a folder of shards
    assert all(len(o) > 0 for o in half["optimizers"])  # the discriminator's optimizer stepped before step 4
    # round 2: FSDP's second half from the step-4 checkpoint, and stage 2 under FSDP reading the straight run's
    # sharded stage-1 checkpoint (consolidated in memory)
    second, _ = run_train_together(
        [*common, f"trainer.max_steps={n}", f"paths.output_dir={resumed}", f"ckpt_path={half_ckpt}"],
        [*DIST, "trainer=fsdp", *two, "trainer.max_steps=2", "checkpoint.every_n_steps=2", "sampling.num=2",
         f"latent.autoencoder={straight / 'checkpoints' / 'last.ckpt'}", f"paths.output_dir={ld}"], timeout=400)
    assert f"at step {n // 2}" in second.stderr + second.stdout, "the second run did not resume"
    a = _stage1_state(straight / "checkpoints" / "last.ckpt")
    b = _stage1_state(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == n and int(a["state_dict"]["ema.num_updates"]) == n
    assert any(k.startswith("discriminator.") for k in a["state_dict"])
    assert max_abs_diff(half["state_dict"], b["state_dict"]) > 1e-4  # the resumed half trained
    for part in ("state_dict", "optimizers", "lr_schedulers"):
        diff = max_abs_diff(a[part], b[part], part)
        assert diff <= 1e-6, f"{part} differs by {diff:.3g} between straight and resumed runs"
    # previews of the sharded EMA autoencoder (every rank joins the gathered forward)
    assert len(list((straight / "samples").glob(f"step{n:07d}_recon_*.png"))) == 2
    # stage 2 read the sharded stage-1 checkpoint, and decoded its samples
    ckpt = load_checkpoint(ld / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and float(ckpt["state_dict"]["latent.scale_factor"]) > 0
    assert ckpt["hyper_parameters"]["latent"]["source"]["sha256"] == file_sha256(straight / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(ckpt["state_dict"]["latent.autoencoder.decoder.blocks.0.conv.weight"],
                               a["state_dict"]["ema.module.decoder.blocks.0.conv.weight"])
    assert len(list((ld / "samples").glob("step0000002_*.png"))) == 2
