"""init.from: a diffusers UNet2DModel folder, a MONAI bundle folder (current and GenerativeModels key layouts) and a
checkpoint of this framework start a run; each bad input is one sentence (exit code 2 from the CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from src.backbones.pretrained import load_pretrained
from src.config import to_plain
from src.errors import ProjectError
from src.latent.stage import build_model
from src.module import DiffusionModule
from src.train import apply_init
from tests.conftest import compose, run_module

SHAPE = [3, 16, 16]
MONAI_NET = {"_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": "@spatial_dims",
             "in_channels": 3, "out_channels": 3, "channels": [16, 32], "attention_levels": [False, True],
             "num_res_blocks": 1, "num_head_channels": 16, "norm_num_groups": 8}


def tiny_diffusers(folder, cls: str = "UNet2DModel", in_channels: int = 3):
    import diffusers

    kw = dict(sample_size=16, in_channels=in_channels, out_channels=in_channels, block_out_channels=(8, 16),
              norm_num_groups=4, layers_per_block=1)
    if cls == "UNet2DModel":
        net = diffusers.UNet2DModel(down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                    up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kw)
    else:
        net = diffusers.UNet2DConditionModel(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                             cross_attention_dim=8, attention_head_dim=4, **kw)
    torch.manual_seed(0)
    net.save_pretrained(folder)
    return net


def monai_bundle(folder, old_layout: bool = False, net_def: dict | None = None, weights: dict | None = None):
    from monai.networks.nets import DiffusionModelUNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    net_def = net_def or MONAI_NET
    (folder / "configs" / "inference.json").write_text(json.dumps({
        "spatial_dims": 2, "network_def": net_def,
        "noise_scheduler": {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 1000,
                            "prediction_type": "epsilon"}}))
    kwargs = {k: v for k, v in {**MONAI_NET, "spatial_dims": 2}.items() if not k.startswith("_")}
    torch.manual_seed(0)
    net = DiffusionModelUNet(**{**kwargs, **(weights or {})})
    state = net.state_dict()
    if old_layout:  # GenerativeModels' names: attention projections on the block, proj_attn, upsampler conv
        state = {k.replace(".attn.to_", ".to_").replace(".attn.out_proj.", ".proj_attn.")
                 .replace("postconv", "conv"): v for k, v in state.items()}
    torch.save(state, folder / "models" / "model.pt")
    return net


def build(overrides: list[str], shape=SHAPE):
    plain = to_plain(compose(["experiment=smoke", "logger=none", *overrides]))
    apply_init(plain)
    init = plain["init"] if plain["init"].get("from") else None
    return build_model(plain, list(shape), init=init, finetune=plain["finetune"] if init else None)


def test_diffusers_folder_becomes_the_backbone_with_its_weights(tmp_path, caplog):
    net = tiny_diffusers(tmp_path / "unet")
    with caplog.at_level("INFO"):
        model = build([f"init.from={tmp_path / 'unet'}"])
    assert model.init_report["share"] == 1.0 and not model.init_report["missing"]
    assert "loaded" in caplog.text and "mismatched" in caplog.text
    for k, v in net.state_dict().items():
        assert torch.equal(model.backbone.net.state_dict()[k], v)
        assert torch.equal(model.ema.module.net.state_dict()[k], v)  # the EMA starts from the same weights
    assert model.hparams["init"]["sha256"] and model.hparams["init"]["kind"] == "diffusers"
    x = torch.randn(2, *SHAPE)
    assert model.backbone(x, torch.rand(2)).shape == x.shape


def test_diffusers_condition_model_runs_without_text(tmp_path):
    tiny_diffusers(tmp_path / "unet", cls="UNet2DConditionModel")
    model = build([f"init.from={tmp_path / 'unet'}"])
    x = torch.randn(2, *SHAPE)
    assert model.backbone(x, torch.rand(2)).shape == x.shape  # one zero token stands in for the text


def test_monai_bundle_current_and_old_layouts(tmp_path, caplog):
    for old in (False, True):
        folder = tmp_path / ("old" if old else "new")
        net = monai_bundle(folder, old_layout=old)
        with caplog.at_level("INFO"):
            model = build([f"init.from={folder}"])
        assert model.init_report["share"] == 1.0
        for k, v in net.state_dict().items():
            assert torch.equal(model.backbone.net.state_dict()[k], v)
    assert "GenerativeModels layout" in caplog.text


def test_own_checkpoint_ema_weights_and_channel_change(tmp_path):
    src = DiffusionModule(backbone={"name": "unet", "spatial_dims": 2, "in_channels": 3, "preset": "tiny"},
                          diffusion={"family": "ddpm", "schedule": "linear", "num_timesteps": 1000,
                                     "prediction": "eps"}, data_shape=SHAPE)
    with torch.no_grad():
        for p in src.ema.module.parameters():
            p.add_(1.0)  # EMA differs from the raw weights
    ckpt = tmp_path / "a.ckpt"
    torch.save({"state_dict": src.state_dict(), "hyper_parameters": dict(src.hparams)}, ckpt)
    model = build([f"init.from={ckpt}"])  # the run's default preset is replaced by the checkpoint's
    assert torch.equal(model.backbone.state_dict()["net.out.2.conv.weight"],
                       src.ema.module.state_dict()["net.out.2.conv.weight"])
    raw = build([f"init.from={ckpt}", "init.use_ema=false"])
    assert torch.equal(raw.backbone.state_dict()["net.out.2.conv.weight"],
                       src.backbone.state_dict()["net.out.2.conv.weight"])
    # MRI-like single-channel data from this RGB model: only the first and last convolutions (3 tensors) differ
    one = build(["datamodule.channels=1", f"init.from={ckpt}"], shape=(1, 16, 16))
    assert 0.9 < one.init_report["share"] < 1.0 and len(one.init_report["mismatched"]) == 3
    # another objective cannot reuse an eps model's outputs, unless asked to relearn them
    with pytest.raises(ProjectError, match="diffusion.family=ddpm"):
        build([f"init.from={ckpt}", "diffusion=flow"])
    assert build([f"init.from={ckpt}", "diffusion=flow", "init.objective=retrain"]).init_report["share"] == 1.0


def one_sentence(e: BaseException, *words: str) -> None:
    msg = str(e)
    assert "\n" not in msg and msg.endswith("."), msg
    for w in words:
        assert w in msg, msg


def test_bad_inputs_are_one_sentence(tmp_path):
    # an unsupported diffusers class
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ProjectError) as e:
        build([f"init.from={tmp_path / 'vae'}"])
    one_sentence(e.value, "AutoencoderKL", "UNet2DModel")
    # shapes that do not fit: the config says 16/32 channels, the weights are of a 32/64 network
    monai_bundle(tmp_path / "wide", weights={"channels": [32, 64], "num_head_channels": 32})
    with pytest.raises(ProjectError) as e:
        build([f"init.from={tmp_path / 'wide'}"])
    one_sentence(e.value, "mostly random", "init.strict=false")
    assert build([f"init.from={tmp_path / 'wide'}", "init.strict=false"]).init_report["share"] < 0.5
    # a Python expression in the bundle's config is code: refused before anything runs
    monai_bundle(tmp_path / "expr", net_def={**MONAI_NET, "num_res_blocks": "$__import__('os').getpid() and 1"})
    with pytest.raises(ProjectError) as e:
        build([f"init.from={tmp_path / 'expr'}"])
    one_sentence(e.value, "Python expression")
    # a pretrained eps model cannot be trained as a flow model without saying so
    tiny_diffusers(tmp_path / "unet")
    with pytest.raises(ProjectError) as e:
        build([f"init.from={tmp_path / 'unet'}", "diffusion=flow"])
    one_sentence(e.value, "init.objective=retrain")
    with pytest.raises(ProjectError) as e:
        build([f"init.from={tmp_path / 'missing'}"])
    one_sentence(e.value, "does not exist")
    with pytest.raises(ProjectError) as e:
        build(["init.objective=sometimes"])
    one_sentence(e.value, "init.objective")


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.slow
def test_unsafe_pickle_is_refused_by_the_cli_with_exit_code_2(tmp_path):
    folder = tmp_path / "bundle"
    monai_bundle(folder)
    torch.save({"net": Payload()}, folder / "models" / "model.pt")
    out = tmp_path / "run"
    proc = run_module(["src.train", "experiment=smoke", "logger=none", "threads=1", f"paths.output_dir={out}",
                       f"init.from={folder}"], env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "cannot be loaded safely" in lines[0] and "model.pt" in lines[0], proc.stderr[-2000:]
    assert "this would have run" not in proc.stdout + proc.stderr


def test_load_pretrained_direct_call_reports_missing_and_unexpected(tmp_path):
    net = tiny_diffusers(tmp_path / "unet")
    model = build([f"init.from={tmp_path / 'unet'}"])
    from safetensors.torch import save_file

    state = {k: v for k, v in net.state_dict().items() if not k.startswith("conv_out")}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "partial.safetensors"))
    report = load_pretrained(model.backbone, {"from": "x", "file": str(tmp_path / "partial.safetensors"),
                                              "kind": "diffusers", "strict": True})
    assert report["missing"] == ["net.conv_out.weight", "net.conv_out.bias"]
    assert report["unexpected"] == ["net.extra.weight"]
