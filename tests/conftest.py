import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def compose(overrides: list[str]):
    """Compose the training config as `python -m src.train` would, without running Hydra's app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


@pytest.fixture
def compose_cfg():
    return compose


def run_module(args: list[str], cwd=ROOT, timeout=600, env=None):
    """Run `python -m ...` in a subprocess with this interpreter, returning the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_together(commands: list[list[str]], env: dict, cwd=ROOT, timeout: float = 600):
    """Start independent commands at once and wait for all, returning their CompletedProcesses in order: a run
    that mostly waits on its interpreter's start-up (or on a rank it launched) leaves a core to another."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        started = []
        for i, cmd in enumerate(commands):
            out, err = Path(tmp, f"{i}.out").open("w+"), Path(tmp, f"{i}.err").open("w+")
            started.append((subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True), out, err))
        deadline = time.monotonic() + timeout
        try:
            results = []
            for proc, out, err in started:
                rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
                out.seek(0)
                err.seek(0)
                results.append(subprocess.CompletedProcess(proc.args, rc, out.read(), err.read()))
            return results
        finally:
            for proc, out, err in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                out.close()
                err.close()


def run_modules_together(arg_lists: list[list[str]], cwd=ROOT, timeout=600, env=None):
    """``run_module`` for several independent ``python -m ...`` commands, started at once."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return run_together([[sys.executable, "-m", *args] for args in arg_lists], full_env, cwd, timeout)
