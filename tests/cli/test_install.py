"""The install is reproducible: every dependency is pinned by the committed lock, which setup installs."""

import re
import sys
import tomllib

import pytest

from src import env_check
from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)(\s*;.*)?$", line)
        assert m, f"requirements.lock line is not an exact pin: {line!r}"
        pins.setdefault(m.group(1).lower().replace("_", "-"), []).append(m.group(2))
    return pins


def test_lock_pins_every_direct_dependency_exactly():
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = list(project["dependencies"]) + [d for ds in project["optional-dependencies"].values() for d in ds]
    for dep in direct:
        name = re.match(r"^[A-Za-z0-9_.\-]+", dep).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} (pyproject.toml) is missing from requirements.lock; run scripts/lock.sh"
    assert pins["torch"] == ["2.14.1"] and pins["torchaudio"] == ["2.11.1"]


def test_installed_versions_are_the_locked_ones():
    from importlib.metadata import version

    pins = locked()
    for name in ("torch", "torchaudio", "pytorch-lightning", "monai", "numpy", "wandb", "hydra-core"):
        assert version(name).split("+")[0] in pins[name], f"{name} {version(name)} is not the locked {pins[name]}"


def test_setup_installs_the_lock_and_checks_the_pair():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-r requirements.lock" in setup and "src.env_check" in setup
    assert "requirements.lock" in (ROOT / "Dockerfile").read_text()
    assert "scripts/lock.sh" in (ROOT / "README.md").read_text()


def test_torchaudio_load_failure_is_one_sentence(monkeypatch):
    real = env_check.importlib.import_module

    def broken(name, *a):
        if name == "torchaudio":
            raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")
        return real(name, *a)

    monkeypatch.setattr(env_check.importlib, "import_module", broken)
    with pytest.raises(env_check.EnvironmentMismatch) as e:
        env_check.import_torchaudio()
    msg = str(e.value)
    import torch

    assert torch.__version__ in msg and "torchaudio 2.11.1" in msg and "scripts/setup.sh" in msg
    assert "\n" not in msg


def test_env_check_reports_the_pair(capsys):
    env_check.main()
    out = capsys.readouterr().out
    assert "load and run" in out and sys.modules["torchaudio"].__version__ in out
