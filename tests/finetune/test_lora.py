"""LoRA (finetune.lora.rank): adapters on a frozen pretrained backbone, adapter-only checkpoints that src.sample,
src.restore, src.reconstruct and src.anomaly rebuild, exact resume, DDP, and the refusals (no matching target,
trainer=fsdp, no base model, a changed base file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.backbones import build_backbone
from src.backbones.lora import add_lora, check_lora, target_modules
from src.backbones.pretrained import check_init, describe, file_sha256
from src.checkpoint import CheckpointError
from src.config import to_plain
from src.errors import ProjectError
from src.latent.stage import module_from_checkpoint
from src.module import DiffusionModule
from src.train import apply_init, train
from tests.conftest import compose

TINY = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "preset": "tiny"}
DDPM = {"family": "ddpm", "schedule": "linear", "num_timesteps": 1000, "prediction": "eps", "sampler": "ddim",
        "steps": 4, "clip_denoised": [-1.0, 1.0]}


def base_checkpoint(path, data_shape=(1, 16, 16), backbone=TINY, run_config=None):
    torch.manual_seed(0)
    module = DiffusionModule(backbone=dict(backbone), diffusion=DDPM, data_shape=list(data_shape))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "run_config": run_config or {"domain": {"name": "image"},
                                             "datamodule": {"resolution": data_shape[-1],
                                                            "channels": data_shape[0]}}}, path)
    return path


def lora_checkpoint(path, base, rank=4, targets=("attention", "conv"), data_shape=(1, 16, 16), backbone=TINY,
                    run_config=None):
    """An adapter-only checkpoint as src.train writes it (adapters moved off zero, so they change outputs)."""
    init = check_init({"from": str(base)})
    init.update(kind="checkpoint", file=str(base), sha256=file_sha256(base))
    module = DiffusionModule(backbone=dict(backbone), diffusion=DDPM, data_shape=list(data_shape), init=init,
                             finetune={"lora": {"rank": rank, "targets": list(targets)}})
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
        module.ema.module.load_state_dict(module.backbone.state_dict())
    state = module.checkpoint_state(module.state_dict())
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams),
                "run_config": run_config or {"domain": {"name": "image"},
                                             "datamodule": {"resolution": data_shape[-1],
                                                            "channels": data_shape[0]}}}, path)
    return module, state


def test_targets_freeze_the_base_and_are_counted():
    net = build_backbone(TINY)
    attn = target_modules(net, ["attention"])
    assert attn and all(".attn." in n for n in attn)
    conv = target_modules(net, ["conv"])
    assert conv and not set(conv) & set(attn)
    assert target_modules(net, [r"middle_block\..*to_q"]) == ["net.middle_block.attention.attn.to_q"]
    counts = add_lora(net, check_lora({"rank": 4, "targets": ["attention"]}))
    assert counts["layers"] == len(attn)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert counts["trainable"] == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert counts["trainable"] < 0.05 * counts["base"]


def test_targets_that_match_nothing_are_one_sentence():
    net = build_backbone(TINY)
    with pytest.raises(ProjectError) as e:
        add_lora(net, check_lora({"rank": 4, "targets": ["no_such_layer"]}))
    msg = str(e.value)
    assert "finetune.lora.targets=no_such_layer matches no layer" in msg and "\n" not in msg and msg.endswith(".")
    with pytest.raises(ProjectError, match="finetune.lora.rank"):
        check_lora({"rank": -2})
    with pytest.raises(ProjectError, match="not a regular expression"):
        check_lora({"rank": 2, "targets": ["("]})


def test_lora_needs_a_base_and_is_refused_under_fsdp(tmp_path):
    with pytest.raises(ProjectError, match="set init.from=PATH"):
        apply_init(to_plain(compose(["experiment=smoke", "finetune.lora.rank=4"])))
    base = base_checkpoint(tmp_path / "base.ckpt", (3, 16, 16), {**TINY, "in_channels": 3})
    with pytest.raises(ProjectError, match="trainer=fsdp"):
        apply_init(to_plain(compose(["experiment=smoke", "trainer=fsdp", f"init.from={base}",
                                     "finetune.lora.rank=4"])))
    lora_checkpoint(tmp_path / "lora.ckpt", base, data_shape=(3, 16, 16), backbone={**TINY, "in_channels": 3})
    with pytest.raises(ProjectError, match="holds only LoRA adapters"):
        describe(tmp_path / "lora.ckpt", TINY)


def test_adapter_only_checkpoint_rebuilds_with_its_base(tmp_path):
    base = base_checkpoint(tmp_path / "base.ckpt")
    module, state = lora_checkpoint(tmp_path / "lora.ckpt", base)
    # only adapters (weights and EMA) and small state: no frozen base weight
    weights = [k for k in state if k.startswith(("backbone.", "ema.module."))]
    assert weights and all(".lora_" in k for k in weights)
    assert (tmp_path / "lora.ckpt").stat().st_size < 0.5 * (tmp_path / "base.ckpt").stat().st_size
    rebuilt, _ = module_from_checkpoint(tmp_path / "lora.ckpt")
    x, t = torch.randn(2, 1, 16, 16), torch.rand(2)
    module.eval()
    torch.testing.assert_close(rebuilt.ema.module(x, t), module.ema.module(x, t))
    plain, _ = module_from_checkpoint(base)
    assert not torch.allclose(plain.ema.module(x, t), rebuilt.ema.module(x, t))  # the adapters are applied
    # the base file changed since: the adapters are refused, not silently applied to other weights
    torch.save({**torch.load(base, weights_only=True), "global_step": 7}, base)
    with pytest.raises(CheckpointError, match="has changed"):
        module_from_checkpoint(tmp_path / "lora.ckpt")


def test_tools_apply_the_adapters(tmp_path):
    """src.restore (image), src.anomaly and src.reconstruct (MRI slices) build through module_from_checkpoint."""
    import nibabel as nib
    from PIL import Image

    from src.anomaly import main as anomaly
    from src.restore import main as restore

    mri = {"domain": {"name": "mri"}, "datamodule": {"mode": "slice", "intensity_scaling": "zero_anchored_percentile",
                                                     "intensity_percentile": 99.5, "slice_axis": 2}}
    base = base_checkpoint(tmp_path / "base.ckpt", run_config=mri)
    lora_checkpoint(tmp_path / "lora.ckpt", base, run_config=mri)
    vol = np.zeros((16, 16, 4), np.float32)
    vol[4:12, 4:12] = 1.0
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "scan.nii.gz")
    anomaly(["--checkpoint", str(tmp_path / "lora.ckpt"), "--input", str(tmp_path / "scan.nii.gz"),
             "--output", str(tmp_path / "map.nii.gz"), "--steps", "2", "--draws", "1"])
    assert np.isfinite(np.asarray(nib.load(tmp_path / "map.nii.gz").dataobj)).all()
    from src.reconstruct import Reconstructor

    recon = Reconstructor.from_checkpoint(tmp_path / "lora.ckpt", device="cpu")
    kspace = np.fft.fftshift(np.fft.fft2(vol[..., 0])).astype(np.complex64)
    image = recon.reconstruct(kspace, np.ones(16, dtype=bool))
    assert image.shape == (16, 16) and np.isfinite(image).all()

    rgb = {**TINY, "in_channels": 3}
    base_img = base_checkpoint(tmp_path / "base_img.ckpt", (3, 16, 16), rgb)
    lora_checkpoint(tmp_path / "lora_img.ckpt", base_img, data_shape=(3, 16, 16), backbone=rgb)
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    restore(["--checkpoint", str(tmp_path / "lora_img.ckpt"), "--task", "denoise", "--input",
             str(tmp_path / "in.png"), "--output", str(tmp_path / "out.png"), "--steps", "2", "--quiet"])
    assert (tmp_path / "out.png").is_file()


@pytest.mark.slow
def test_lora_run_resumes_exactly_and_samples(tmp_path):
    """src.train with init.from + LoRA: 8 steps straight equal 4 steps and a resume; src.sample draws from it."""
    from tests.conftest import run_module

    base = base_checkpoint(tmp_path / "base.ckpt", (3, 16, 16), {**TINY, "in_channels": 3})
    common = ["experiment=smoke", "logger=none", "datamodule.resolution=16", "datamodule.builtin_size=64",
              "trainer.val_check_interval=4", "sampling.num=0", "checkpoint.every_n_steps=4", "checkpoint.keep=-1",
              "trainer.max_steps=8", "optim.total_steps=8", f"init.from={base}", "finetune.lora.rank=4",
              "finetune.lora.targets=[attention,conv]"]
    a, b = tmp_path / "a", tmp_path / "b"
    train(compose([*common, f"paths.output_dir={a}"]))
    mid = a / "checkpoints" / "step0000004.ckpt"
    train(compose([*common, f"paths.output_dir={b}", f"ckpt_path={mid}"]))
    ca, cb = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (a, b))
    assert ca["global_step"] == cb["global_step"] == 8
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert all(".lora_" in k for k in ca["state_dict"] if k.startswith(("backbone.", "ema.module.")))
    start = torch.load(mid, weights_only=True)["state_dict"]
    moved = [k for k in start if ".lora_B" in k and not torch.equal(start[k], ca["state_dict"][k])]
    assert moved, "the adapters did not train"
    for k, v in ca["state_dict"].items():
        torch.testing.assert_close(cb["state_dict"][k], v, atol=1e-6, rtol=0, msg=k)
    proc = run_module(["src.sample", f"ckpt={a / 'checkpoints' / 'last.ckpt'}", "num_samples=2", "steps=2",
                       f"out={tmp_path / 'samples'}"], env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lora_under_two_process_ddp(tmp_path):
    from tests.helpers.dist import TINY as DIST_TINY
    from tests.helpers.dist import run_train

    base = base_checkpoint(tmp_path / "base.ckpt", (3, 16, 16), {**TINY, "in_channels": 3})
    out = tmp_path / "ddp"
    run_train([*DIST_TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
               f"paths.output_dir={out}", f"init.from={base}", "finetune.lora.rank=4"], timeout=300)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    weights = [k for k in ckpt["state_dict"] if k.startswith(("backbone.", "ema.module."))]
    assert weights and all(".lora_" in k for k in weights)
    module, _ = module_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert module.sample(1, steps=2).shape == (1, 3, 16, 16)
