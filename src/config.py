"""Config helpers: the run-id resolver and conversion of resolved configs to plain containers."""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf

RUN_ID_ENV = "DIFFUSION_RUN_ID"


def run_id() -> str:
    """SLURM job id (array-aware) when under SLURM, else a start timestamp fixed for this process tree.

    The timestamp goes into the environment so that ranks launched as subprocesses agree on it.
    """
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    if RUN_ID_ENV not in os.environ:
        os.environ[RUN_ID_ENV] = time.strftime("%Y-%m-%d_%H-%M-%S")
    return os.environ[RUN_ID_ENV]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)


def to_plain(cfg: DictConfig | dict | None) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


REDACTED = "<not recorded: privacy>"


PATH_KEY_ENDINGS = ("path", "dir", "file", "url", "root", "autoencoder")


def _looks_like_path(value) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~", "./", "../")) or "://" in value
                                       or value.startswith("pipe:"))


def redact(plain: dict, data_path: bool, class_names: bool = False) -> dict:
    """A copy of a plain config without what must not leave the machine.

    With ``data_path``: every path-like entry, at any depth (``datamodule.path``, ``shards.val_path``,
    ``cache_dir``, ``ckpt_path``, ``paths.*``, URLs), since folder and file names may carry a patient's name.
    With ``class_names``: the class names of a class-conditional model (``cond.classes``, the label map read
    from folder names or a CSV column, which may name patients or sites); the class count stays.
    """

    def walk(node, key=""):
        if isinstance(node, dict):
            if class_names and key == "cond" and node.get("classes") is not None:
                node = {**node, "classes": REDACTED}
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if data_path and node is not None and (key.lower().endswith(PATH_KEY_ENDINGS) or _looks_like_path(node)):
            return REDACTED
        return node

    return walk(plain)


def expand_home(argv: list[str]) -> list[str]:
    """``key=~/x`` -> ``key=/home/me/x``: bash leaves ``~`` after ``=`` alone and Hydra's grammar rejects it."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and (value == "~" or value.startswith("~/")):
            arg = f"{key}={os.path.expanduser(value)}"
        out.append(arg)
    return out
