"""Domains are packages registered in one table; a fourth one plugs in from outside without editing the core."""

import ast
import subprocess
import sys
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

import src.domains as domains
from datamodules import DiffusionDataModule
from src.backbones import build_backbone, check_data_shape, size_multiple
from src.domains import build_datamodule
from src.errors import ConfigError, DataError
from src.media import build_media
from src.metrics import build_metrics
from tests.conftest import ROOT, run_module

TOY = "tests.toy_domain"
# the engine and its CLIs: none of these may name a domain or import one's modules
CORE = ["src/module.py", "src/train.py", "src/sample.py", "src/media.py", "src/metrics.py",
        "src/registry.py", "src/checkpoint.py", "src/config.py",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src/runtime").glob("*.py")),
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src/diffusion").glob("*.py")),
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "datamodules").glob("*.py"))]


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setenv(domains.ENV_VAR, TOY)


def test_one_table_of_builtin_domains_each_with_its_config_and_parts():
    table = domains.all_domains()
    assert list(table) == ["image", "audio", "mri"] == list(domains.BUILTIN)
    for name, d in table.items():
        assert d.name == name and d.config_file == ROOT / "configs" / "domain" / f"{name}.yaml"
        assert d.config_file.is_file()
        factory = d.load("datamodule")  # a DiffusionDataModule class, or a function choosing one
        assert issubclass(factory, DiffusionDataModule) if isinstance(factory, type) else callable(factory)
        assert callable(d.load("media").save)
        assert d.load("shard_codec").EXTENSIONS
    assert table["image"].load("metrics") is not None and table["audio"].load("metrics") is not None


def test_listing_the_domains_imports_none_of_their_code():
    code = ("import sys, src.domains as d; d.all_domains(); "
            "print(sorted(m for m in sys.modules if m.startswith('src.domains.') and m.count('.') > 2), "
            "'torchaudio' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "False"]


def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_core_never_names_a_domain():
    import re

    names = set(domains.BUILTIN) | {"toy"}
    word = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(names)) + r")(?![A-Za-z0-9_])", re.IGNORECASE)
    alt = "|".join(sorted(names))
    # a domain's package, the places domain code used to live, or the tools built over the domains
    modules = re.compile(rf"^(src\.domains\.({alt})|src\.(audio|media_mri|mri_metrics)|datamodules\.({alt})"
                         rf"|src\.tools)(\.|$)")
    found = []
    for rel in CORE:
        tree = ast.parse((ROOT / rel).read_text())
        package = rel.rsplit("/", 1)[0].replace("/", ".")
        found += [f"{rel}:{line} string {text!r}" for line, text in _string_literals(tree) if word.search(text)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module or ''}".rstrip(".") if node.level else node.module
                mods = [mod, *(f"{mod}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            found += [f"{rel}:{node.lineno} imports {m}" for m in mods if modules.match(m)]
    assert not found, "the core names a domain: " + "; ".join(found)


def test_plugins_come_from_the_environment_variable_and_entry_points(toy, monkeypatch):
    assert list(domains.all_domains()) == ["image", "audio", "mri", "toy"]
    assert domains.plugin_config_dirs() == [str(ROOT / "tests" / "toy_domain" / "conf")]
    monkeypatch.delenv(domains.ENV_VAR)
    assert "toy" not in domains.all_domains()
    ep = EntryPoint(name="toy", value=f"{TOY}:DOMAIN", group=domains.ENTRY_POINT_GROUP)
    monkeypatch.setattr(domains, "entry_points", lambda group: [ep] if group == domains.ENTRY_POINT_GROUP else [])
    assert domains.get_domain("toy").media.endswith("CsvMedia")


def test_a_wrong_plugin_is_one_sentence_naming_it(monkeypatch):
    monkeypatch.setenv(domains.ENV_VAR, "tests.no_such_domain")
    with pytest.raises(ConfigError, match="DIFFUSION_DOMAINS names module 'tests.no_such_domain'"):
        domains.all_domains()
    monkeypatch.setenv(domains.ENV_VAR, "tests.conftest")
    with pytest.raises(ConfigError, match="tests.conftest.*exports no DOMAIN"):
        domains.all_domains()


def test_the_toy_domain_parts_build_from_config_nodes(toy):
    metrics = build_metrics({"kind": "toy", "num_samples": 4, "sampler": None, "steps": None, "batch_size": None})
    t = torch.arange(64) / 64
    real = torch.sin(2 * torch.pi * 3 * t).expand(4, 1, 64)
    assert metrics(real, real)["cycles_gap"] == 0.0
    assert metrics(torch.sin(2 * torch.pi * 5 * t).expand(4, 1, 64), real)["cycles_gap"] == 2.0
    assert type(build_media({"kind": "toy"})).__name__ == "CsvMedia"


def test_unknown_names_list_the_choices_and_unknown_keys_are_named(toy):
    with pytest.raises(ConfigError, match=r"Unknown media.kind 'imgae'; choose one of image, audio, mri, toy\."):
        build_media({"kind": "imgae"})
    with pytest.raises(ConfigError, match=r"Unknown metrics.kind 'imgae'; choose one of image, audio, mri, toy\."):
        build_metrics({"kind": "imgae"})
    with pytest.raises(DataError, match=r"Unknown key datamodule.resolutoin for datamodule.name=image; .*resolution"):
        build_datamodule({"name": "image", "resolutoin": 32})
    with pytest.raises(DataError, match="Unknown key datamodule.typo for datamodule.name=toy"):
        build_datamodule({"name": "toy", "typo": 1})
    with pytest.raises(ConfigError, match="Unknown key media.sample_rat for media.kind=audio"):
        build_media({"kind": "audio", "sample_rat": 16000})
    with pytest.raises(ConfigError, match="Unknown key backbone.presett for backbone.name=diffwave"):
        build_backbone({"name": "diffwave", "presett": "tiny"})


def test_old_checkpoints_run_config_names_still_resolve():
    # the run_config nodes checkpoints written before domains were packages hold (media by kind, data by name)
    old = {"media": {"kind": "mri", "mode": "slice", "spacing": [3.0, 3.0, 3.0], "slice_axis": 2},
           "metrics": {"kind": "audio", "sample_rate": 16000, "paired": False, "num_samples": 8, "sampler": None,
                       "steps": None, "batch_size": None}}
    assert type(build_media(old["media"])).__name__ == "MRIMedia"
    assert type(build_media({"kind": "image"})).__name__ == "ImageMedia"
    assert type(build_metrics(old["metrics"])).__name__ == "AudioMetrics"
    dm = build_datamodule({"name": "mri", "mode": "slice", "shape": [16, 16], "builtin_size": 2, "num_workers": 0})
    assert dm.data_shape == [1, 16, 16]


def test_backbones_declare_the_size_multiple_the_data_must_meet():
    unet = build_backbone({"name": "unet", "spatial_dims": 2, "in_channels": 1, "preset": "small"})
    assert size_multiple(unet) == 4  # three levels: two halvings
    check_data_shape([1, 16, 24], unet)
    with pytest.raises(ConfigError, match=r"multiple of 4; the data shape is \[18, 16\]"):
        check_data_shape([1, 18, 16], unet)
    wave = build_backbone({"name": "diffwave", "preset": "tiny"})
    assert size_multiple(wave) == 1
    check_data_shape([1, 77], wave)
    # the MRI data no longer decides for the network: any whole sizes pass the datamodule
    assert build_datamodule({"name": "mri", "shape": [20, 20, 12], "num_workers": 0}).data_shape == [1, 20, 20, 12]


def test_toy_domain_from_the_test_folder_trains_and_samples(tmp_path):
    env = {domains.ENV_VAR: TOY, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    r = run_module(["src.train", "domain=toy", "experiment=smoke", "logger=none", "trainer=cpu",
                    "trainer.max_steps=6", "trainer.val_check_interval=3", "checkpoint.every_n_steps=3",
                    "sampling.every_n_steps=6", "sampling.num=2", "sampling.steps=4", "metrics.num_samples=4",
                    f"paths.output_dir={out}"], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    previews = sorted((out / "samples").glob("*.csv"))
    assert ckpt.is_file() and len(previews) == 2
    assert np.loadtxt(previews[0], delimiter=",").shape == (64,)
    run_config = torch.load(ckpt, map_location="cpu", weights_only=False)["run_config"]
    assert run_config["media"] == {"kind": "toy"} and run_config["datamodule"]["name"] == "toy"

    r = run_module(["src.sample", f"ckpt={ckpt}", "num_samples=3", "steps=4", "seed=1", "device=cpu",
                    f"out={tmp_path / 'samples'}"], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted((tmp_path / "samples").glob("*.csv"))
    assert len(files) == 3
    series = np.stack([np.loadtxt(f, delimiter=",") for f in files])
    assert series.shape == (3, 64) and np.isfinite(series).all() and np.abs(series).max() <= 1
    # without the plugin the checkpoint's domain is unknown, and the error says which domains there are
    r = run_module(["src.sample", f"ckpt={ckpt}", "num_samples=1", "device=cpu", f"out={tmp_path / 'x'}"],
                   env={domains.ENV_VAR: ""}, timeout=300)
    assert r.returncode != 0 and "Unknown media.kind 'toy'; choose one of image, audio, mri." in r.stderr


def test_no_shared_file_mentions_the_toy_domain():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    outside = [p for p in tracked if not p.startswith("tests/") and (ROOT / p).is_file()
               and p.endswith((".py", ".yaml", ".toml")) and "toy_domain" in (ROOT / p).read_text()]
    assert outside == []
