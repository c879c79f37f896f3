"""Classifier-free guidance: the guided denoiser against the closed form on a conditional Gaussian mixture,
label dropout, and class-conditional sampling through the module and `src.sample`."""

import pytest
import torch

from src.diffusion.guidance import drop_labels, guided
from src.diffusion.objectives import EDMObjective
from src.diffusion.samplers import SAMPLERS
from src.errors import ConfigError

MEANS = torch.tensor([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]])  # one Gaussian per class
S2 = 0.1 ** 2
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
NULL = 3


def cond_denoiser(x, sigma, label):
    """E[x0 | x, label]; the null label gives E[x0 | x] under the class mixture (what label dropout trains)."""
    s2 = sigma.reshape(-1, 1) ** 2
    per_class = MEANS[None] + (S2 / (S2 + s2))[:, None] * (x[:, None] - MEANS[None])  # (B, K, 2)
    logw = WEIGHTS.log() - ((x[:, None] - MEANS[None]) ** 2).sum(-1) / (2 * (S2 + s2))
    mix = (torch.softmax(logw, 1)[..., None] * per_class).sum(1)
    own = per_class[torch.arange(len(x)), label.clamp(max=NULL - 1)]
    return torch.where((label == NULL)[:, None], mix, own)


def log_p(x, sigma, label=None):
    """log p_sigma(x | label), or log p_sigma(x) without a label: Gaussians of variance S2 + sigma^2."""
    var = S2 + sigma**2
    logn = -((x[:, None] - MEANS[None]) ** 2).sum(-1) / (2 * var) - torch.log(2 * torch.pi * var)
    if label is None:
        return torch.logsumexp(WEIGHTS.log() + logn, 1)
    return logn[torch.arange(len(x)), label]


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 7.0])
@pytest.mark.parametrize("sigma", [0.05, 0.7, 4.0])
def test_guided_denoiser_is_the_tilted_score(w, sigma):
    """D_w = x + sigma^2 grad log[p(x|c)^w p(x)^(1-w)] (Ho & Salimans 2022), the score taken by autograd."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 2, generator=g) * (1 + sigma)).requires_grad_(True)
    label = torch.randint(0, NULL, (64,), generator=g)
    sig = torch.full((64,), sigma)
    tilted = w * log_p(x, sig[0], label) + (1 - w) * log_p(x, sig[0])
    (score,) = torch.autograd.grad(tilted.sum(), x)
    expected = x.detach() + sigma**2 * score
    got = guided(cond_denoiser, label, NULL, w)(x.detach(), sig)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_guidance_one_network_call_per_step_and_sampling_reaches_the_class():
    calls = []

    def counted(x, sigma, label):
        calls.append(len(x))
        return cond_denoiser(x, sigma, label)

    sigmas = EDMObjective(sigma_max=20.0).sampling_sigmas(24)
    label = torch.full((4000,), 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 2, generator=g) * sigmas[0]
    out = SAMPLERS["dpmpp_2m"](guided(counted, label, NULL, 3.0), x, sigmas)
    assert calls == [8000] * 24  # conditional and unconditional halves in one batch
    # w = 3: every sample in class 2's component, pushed away from the other classes (guidance overshoots
    # the class mean, away from the mixture's mass), spread no wider than the class itself
    assert (torch.cdist(out, MEANS).argmin(1) == 2).float().mean() > 0.999
    mix_mean = (WEIGHTS[:, None] * MEANS).sum(0)
    assert (out.mean(0) - MEANS[2]) @ (MEANS[2] - mix_mean) > 0
    assert (out.std(0) < 0.1 * 1.1).all()
    plain = SAMPLERS["dpmpp_2m"](guided(cond_denoiser, label, NULL, 1.0), x, sigmas)
    assert torch.allclose(plain.std(0), torch.tensor([0.1, 0.1]), rtol=0.1)


def test_unconditional_draw_follows_the_mixture_weights():
    sigmas = EDMObjective(sigma_max=20.0).sampling_sigmas(32)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6000, 2, generator=g) * sigmas[0]
    out = SAMPLERS["heun"](guided(cond_denoiser, torch.full((6000,), 0), NULL, 0.0), x, sigmas)
    nearest = torch.cdist(out, MEANS).argmin(1)
    frac = torch.bincount(nearest, minlength=3).float() / len(out)
    assert torch.allclose(frac, WEIGHTS, atol=0.03), frac


def test_drop_labels_rate_and_negative_guidance_refused():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (20000,), generator=g)
    dropped = drop_labels(label, NULL, 0.2, g)
    frac = (dropped == NULL).float().mean().item()
    assert abs(frac - 0.2) < 0.01
    kept = dropped != NULL
    assert torch.equal(dropped[kept], label[kept])
    assert torch.equal(drop_labels(label, NULL, 0.0, g), label)
    with pytest.raises(ConfigError, match="guidance"):
        guided(cond_denoiser, label, NULL, -1.0)


# ---- the module and the command line ---------------------------------------------------------------------
def tiny_conditional_module(num_classes=3, **cond):
    from src.module import DiffusionModule

    m = DiffusionModule(backbone={"name": "unet", "spatial_dims": 2, "in_channels": 1, "preset": "tiny"},
                        diffusion={"family": "edm", "sampler": "dpmpp_2m", "steps": 3},
                        data_shape=[1, 8, 8], cond={"num_classes": num_classes, **cond})
    with torch.no_grad():  # MONAI zero-initialises the output layer: give it weights so labels show
        for p in m.backbone.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.05)
    m.ema.module.load_state_dict(m.backbone.state_dict())
    return m


def test_module_trains_on_labels_and_samples_each_class():
    torch.manual_seed(0)
    m = tiny_conditional_module(drop_prob=0.5)
    batch = {"x": torch.randn(4, 1, 8, 8), "label": torch.tensor([0, 1, 2, 1])}
    loss = m.training_step(batch, 0)
    loss.backward()
    emb = m.backbone.net.class_embedding.weight
    assert emb.shape[0] == 4 and emb.grad is not None and emb.grad.abs().sum() > 0
    a = m.sample(2, label=torch.tensor([0, 0]), guidance=2.0, seed=0)
    b = m.sample(2, label=torch.tensor([2, 2]), guidance=2.0, seed=0)
    u = m.sample(2, seed=0)
    assert a.shape == (2, 1, 8, 8) and torch.isfinite(a).all()
    assert not torch.allclose(a, b) and not torch.allclose(a, u)
    with pytest.raises(ConfigError, match="cond.num_classes"):
        m.training_step({"x": batch["x"]}, 0)
    with pytest.raises(ConfigError, match="label must be in 0..2"):
        m.sample(1, label=torch.tensor([3]))


def test_sample_cli_label_all_writes_one_row_per_class(tmp_path):
    from PIL import Image

    from src.sample import parse_args, sample

    m = tiny_conditional_module(classes=["zero", "one", "two"])
    ckpt = tmp_path / "cond.ckpt"
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict(),
                "run_config": {"media": {"kind": "image"}}}, ckpt)
    out = tmp_path / "drawn"
    paths = sample(parse_args([f"ckpt={ckpt}", "label=all", "guidance=2", "num_samples=2", "steps=2",
                               "seed=0", "device=cpu", f"out={out}"]))
    assert len(paths) == 6 and sorted(p.name for p in paths)[0] == "sample_c000_00000.png"
    grid = Image.open(out / "sample_grid.png")
    assert grid.size == (2 * (8 + 2) + 2, 3 * (8 + 2) + 2)  # two per row, one row per class
    one = sample(parse_args([f"ckpt={ckpt}", "label=1", "num_samples=1", "steps=2", "seed=0", "device=cpu",
                             f"out={tmp_path / 'one'}"]))
    assert [p.name for p in one] == ["sample_c001_00000.png"]
    with pytest.raises(ConfigError, match="label=5 is not a class"):
        sample(parse_args([f"ckpt={ckpt}", "label=5", "steps=2", "device=cpu", f"out={tmp_path / 'bad'}"]))


def test_train_cond_class_needs_classes(compose_cfg):
    from src.train import module_cond

    cfg = compose_cfg(["cond=class", "cond.num_classes=4"])
    assert module_cond(dict(cfg.cond), object()) == {"num_classes": 4, "classes": ["0", "1", "2", "3"],
                                                     "drop_prob": 0.1}
    assert module_cond(dict(compose_cfg([]).cond), object()) is None

    class WithMap:
        classes = ["cat", "dog"]

    assert module_cond(dict(compose_cfg(["cond=class"]).cond), WithMap())["num_classes"] == 2
    with pytest.raises(ConfigError, match="cond=class found no classes"):
        module_cond(dict(compose_cfg(["cond=class"]).cond), object())


def test_training_on_labelled_batches_writes_samples_class_by_class(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from src.domains import build_media
    from src.runtime.callbacks import SampleCallback

    m = tiny_conditional_module(drop_prob=0.2)
    data = [{"x": torch.randn(1, 8, 8), "label": i % 3} for i in range(8)]
    cb = SampleCallback(tmp_path / "samples", build_media({"kind": "image"}), every_n_steps=2, num=7, steps=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                         limit_val_batches=0)
    trainer.fit(m, DataLoader(data, batch_size=4))
    assert m.ema.updates == 2
    assert len(sorted((tmp_path / "samples").glob("step0000002_*.png"))) == 6  # 2 per class, class after class


def test_diffwave_class_embedding_changes_the_output_and_refuses_labels_without_classes():
    from src.backbones.diffwave import build_diffwave

    torch.manual_seed(0)
    net = build_diffwave(preset="tiny", num_classes=2)
    torch.nn.init.normal_(net.output.weight, std=0.1)  # zero-initialised output: give it weights
    x, t = torch.randn(2, 1, 64), torch.full((2,), 0.5)
    a = net(x, t, label=torch.tensor([0, 0]))
    b = net(x, t, label=torch.tensor([1, 2]))  # 2 = the null label
    assert a.shape == x.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="without classes"):
        build_diffwave(preset="tiny")(x, t, label=torch.tensor([0, 1]))
