"""Text encoders for cond=text: the built-in byte encoder, tiny CLIP/T5 folders written by save_pretrained (no
network), the one-sentence refusals for bad folders, and text reaching the UNet (2D/3D) and DiffWave."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from src.backbones import build_backbone
from src.backbones.text import (
    BuiltinTextEncoder,
    ByteTokenizer,
    PretrainedTextEncoder,
    TextConditioned,
    check_encoder_folder,
    check_text_cond,
)
from src.diffusion.guidance import cat_conditions, guided
from src.errors import ConfigError
from tests.helpers.text import tiny_clip, tiny_t5


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {"t5": tiny_t5(root / "t5"), "clip": tiny_clip(root / "clip")}


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_pretrained_encoder_gives_tokens_and_pooled_and_caches(encoders, kind):
    enc = PretrainedTextEncoder(kind, encoders[kind], max_length=12)
    out = enc(["a red circle", "", "a red circle"], "cpu")
    assert out["context"].shape == (3, 12, 32) and out["pooled"].shape == (3, 32)
    assert torch.equal(out["context"][0], out["context"][2])
    assert not torch.allclose(out["pooled"][0], out["pooled"][1])  # the empty caption is a caption of its own
    assert set(enc.cache) == {"a red circle", ""}  # one entry per distinct caption
    assert all(not p.requires_grad for p in enc.model.parameters())  # frozen
    enc.set_precision("bf16-mixed")
    assert next(enc.model.parameters()).dtype == torch.bfloat16 and not enc.cache
    assert enc(["a red circle"], "cpu")["context"].dtype == torch.float32


def test_clip_length_is_capped_by_its_positions(encoders):
    assert PretrainedTextEncoder("clip", encoders["clip"], max_length=77).max_length == 16


def test_overlong_captions_are_cut_and_said_once(encoders, caplog):
    enc = PretrainedTextEncoder("t5", encoders["t5"], max_length=8, cache=False)
    with caplog.at_level(logging.WARNING, logger="src.backbones.text"):
        enc(["a caption far longer than eight bytes"], "cpu")
        enc(["another caption far longer than eight bytes"], "cpu")
    cut = [r for r in caplog.records if "are cut" in r.getMessage()]
    assert len(cut) == 1 and "longer than 8 tokens" in cut[0].getMessage()
    assert "far longer" not in cut[0].getMessage()  # the caption itself is never logged


def test_byte_tokenizer_start_padding_and_truncation(caplog):
    tok = ByteTokenizer(max_length=4)
    with caplog.at_level(logging.WARNING, logger="src.backbones.text"):
        t = tok(["ab", "", "abcdefgh"], "cpu")
    assert t["ids"].shape == (3, 5) and (t["ids"][:, 0] == ByteTokenizer.START).all()
    assert t["ids"][0, 1:3].tolist() == [ord("a") + 1, ord("b") + 1] and t["mask"].sum(1).tolist() == [3, 1, 5]
    assert sum("are cut" in r.getMessage() for r in caplog.records) == 1
    enc = BuiltinTextEncoder(dim=16, layers=1, heads=2, max_length=4)
    context, pooled = enc(t["ids"], t["mask"])
    assert context.shape == (3, 5, 16) and pooled.shape == (3, 16)
    assert (context[1, 1:] == 0).all()  # padding carries nothing


def _write(folder, name, text="x"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


@pytest.mark.parametrize("case, expected", [
    ("missing", "is not a folder"),
    ("no_config", "no config.json"),
    ("wrong_type", "holds a 'bert' model"),
    ("pickle", "pytorch_model.bin, a pickle"),
    ("no_weights", "no model.safetensors"),
    ("no_tokenizer", "no tokenizer files"),
])
def test_bad_encoder_folders_are_refused_with_one_sentence(tmp_path, encoders, case, expected):
    folder = tmp_path / "enc"
    if case == "no_config":
        _write(folder, "model.safetensors")
    elif case == "wrong_type":
        _write(folder, "config.json", json.dumps({"model_type": "bert"}))
    elif case in ("pickle", "no_weights"):
        _write(folder, "config.json", json.dumps({"model_type": "t5"}))
        _write(folder, "tokenizer_config.json", "{}")
        if case == "pickle":
            _write(folder, "pytorch_model.bin")
    elif case == "no_tokenizer":
        _write(folder, "config.json", json.dumps({"model_type": "t5"}))
        _write(folder, "model.safetensors")
    with pytest.raises(ConfigError, match=expected) as e:
        check_encoder_folder("t5", folder)
    assert str(e.value).count(". ") == 0 and str(folder) in str(e.value)


def test_encoder_settings_are_checked():
    with pytest.raises(ConfigError, match="cond.encoder must be one of builtin, clip, t5"):
        check_text_cond({"encoder": "bert"})
    with pytest.raises(ConfigError, match="needs cond.encoder_path=DIR"):
        check_text_cond({"encoder": "clip"})
    with pytest.raises(ConfigError, match="multiple of cond.heads"):
        check_text_cond({"encoder": "builtin", "dim": 30, "heads": 4})


def test_a_clip_folder_is_not_a_t5_encoder(encoders):
    with pytest.raises(ConfigError, match="holds a 'clip_text_model' model, which cond.encoder=t5 does not support"):
        check_encoder_folder("t5", encoders["clip"])


@pytest.mark.parametrize("name, shape, extra", [
    ("unet", (2, 1, 8, 8), {"spatial_dims": 2, "in_channels": 1, "preset": "tiny"}),
    ("unet", (2, 1, 8, 8, 8), {"spatial_dims": 3, "in_channels": 1, "preset": "tiny"}),
    ("diffwave", (2, 1, 64), {"in_channels": 1, "preset": "tiny"}),
])
def test_text_changes_the_output_of_every_backbone(name, shape, extra):
    torch.manual_seed(0)
    net = TextConditioned(build_backbone({"name": name, **extra, "context_dim": 16}),
                          BuiltinTextEncoder(dim=16, layers=1, heads=2, max_length=16))
    for p in net.parameters():  # zero-initialised outputs would hide the path: give every weight a value
        torch.nn.init.normal_(p, std=0.2)
    tok = ByteTokenizer(16)
    x, nl = torch.randn(shape), torch.full((shape[0],), 0.5)
    a = net(x, nl, text=tok(["a red circle", "a red circle"], "cpu"))
    b = net(x, nl, text=tok(["a blue square", "a blue square"], "cpu"))
    assert a.shape == x.shape and not torch.allclose(a, b)
    a.sum().backward()  # the built-in encoder trains with the model
    assert net.encoder.embed.weight.grad is not None


def test_guidance_concatenates_text_conditions_of_different_lengths():
    a = {"ids": torch.ones(2, 3, dtype=torch.long), "mask": torch.ones(2, 3, dtype=torch.bool)}
    b = {"ids": torch.ones(2, 1, dtype=torch.long), "mask": torch.ones(2, 1, dtype=torch.bool)}
    both = cat_conditions(a, b)
    assert both["ids"].shape == (4, 3) and both["mask"][2:].sum().item() == 2  # padded, not attended

    def den(x, sigma, t):
        return x * 0 + t["ids"].sum(1, keepdim=True).float()

    out = guided(den, a, b, 3.0)(torch.zeros(2, 1), torch.ones(2))
    assert torch.allclose(out, torch.full((2, 1), 1 + 3 * (3 - 1.0)))  # u + w (c - u)


FLOW = {"family": "flow", "time_density": "logit_normal", "sigma_max": 80.0, "sampler": "euler", "steps": 2,
        "clip_denoised": None, "sampler_options": {}}


@pytest.mark.parametrize("kind", ["builtin", "t5"])
def test_a_text_model_trains_samples_with_prompts_and_keeps_frozen_weights_out(encoders, kind):
    from src.module import DiffusionModule

    cond = {"kind": "text", "encoder": kind, "max_length": 8, "dim": 16, "heads": 2, "layers": 1}
    if kind != "builtin":
        cond["encoder_path"] = str(encoders[kind])
    m = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "spatial_dims": 2, "in_channels": 1},
                        diffusion=FLOW, data_shape=[1, 8, 8], cond=cond)
    batch = {"x": torch.randn(2, 1, 8, 8), "caption": ["a red circle", "a blue square"]}
    loss = m.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.net.net.class_embedding.weight.grad is not None
    x = m.sample(2, text=["a red circle", "a blue square"], guidance=3.0, steps=2)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    assert m.sample(1, steps=2).shape == (1, 1, 8, 8)  # no prompt: the empty caption
    # a tool that knows nothing of text calls the backbone plainly: the empty caption
    assert m.backbone(torch.randn(1, 1, 8, 8), torch.full((1,), 0.5)).shape == (1, 1, 8, 8)
    keys = list(m.state_dict())
    assert any(k.startswith("backbone.encoder.") for k in keys) == (kind == "builtin")
    assert not any("null_" in k or "shared" in k or "block.0.layer" in k for k in keys)
    with pytest.raises(ConfigError, match="Got 1 prompts for 2 samples"):
        m.sample(2, text=["a red circle"], steps=2)


def test_prompts_on_a_model_without_text_are_refused():
    from src.module import DiffusionModule

    m = DiffusionModule(backbone={"name": "unet", "preset": "tiny", "spatial_dims": 2, "in_channels": 1},
                        diffusion=FLOW, data_shape=[1, 8, 8])
    with pytest.raises(ConfigError, match="prompt= needs a text-conditional checkpoint"):
        m.sample(1, text=["a red circle"], steps=2)
    with pytest.raises(ConfigError, match="cond=text and class labels"):
        DiffusionModule(backbone={"name": "unet", "preset": "tiny", "in_channels": 1}, diffusion=FLOW,
                        data_shape=[1, 8, 8], cond={"kind": "text", "num_classes": 3})
    with pytest.raises(ConfigError, match="backbone.name=diffusers_unet2d takes no text"):
        DiffusionModule(backbone={"name": "diffusers_unet2d", "in_channels": 1}, diffusion=FLOW,
                        data_shape=[1, 8, 8], cond={"kind": "text"})
