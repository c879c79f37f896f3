"""Config helpers: the run-id resolver and conversion of resolved configs to plain containers."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

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


PATH_KEY_ENDINGS = ("path", "dir", "file", "url", "root", "autoencoder", "csv", "json", "folder")
# a value ending in one of these is a file name whatever its key (``labels_csv=DOE^JANE_labels.csv``)
FILE_EXTENSIONS = re.compile(
    r"\.(csv|tsv|txt|json|jsonl|ya?ml|xml|png|jpe?g|tiff?|bmp|webp|gif|wav|flac|ogg|mp3|nii|gz|h5|hdf5|npy|npz|"
    r"dcm|dicom|ima|mha|mhd|nrrd|mat|ckpt|pt|pth|bin|safetensors|tar|zip|pkl|pickle)$", re.IGNORECASE)


def looks_like_path(value) -> bool:
    """A string that is a path or a file name by what it is, not by its key: it has a folder separator, starts
    like a path (``/``, ``~``, ``.``), is a URL or ``pipe:`` command, ends in a file extension, or names a
    file or folder that exists (relative to the working folder)."""
    if not isinstance(value, str) or not value.strip():
        return False
    v = value.strip()
    if v.startswith(("/", "~", ".", "pipe:")) or "/" in v or "\\" in v or "://" in v or FILE_EXTENSIONS.search(v):
        return True
    try:
        return os.path.lexists(v)
    except (OSError, ValueError):
        return False


def data_names(root, limit: int = 200_000) -> set[str]:
    """Names of the files under a data folder, so that a config value that repeats one is redacted even when
    its extension is not a known one; empty when ``root`` is not a local folder. (Folder names are class names
    under ``cond=class``, redacted by ``class_names``; a bare word such as ``image`` stays, as it may be a
    setting's value.)"""
    names: set[str] = set()
    try:
        folder = Path(str(root)).expanduser()
        if not folder.is_dir():
            return names
        for i, p in enumerate(folder.rglob("*")):
            if i >= limit:
                break
            if p.is_file():
                names.add(p.name)
    except (OSError, ValueError):
        return names
    return {n for n in names if len(n) >= 3}


def redact(plain: dict, data_path: bool, class_names: bool = False, names: set[str] | None = None) -> dict:
    """A copy of a plain config without what must not leave the machine.

    With ``data_path``: every value that is a path or a file name, at any depth, judged by what the value is
    (``looks_like_path``: ``datamodule.labels_csv=DOE^JANE_labels.csv``, ``/data/DOE^JANE``) as well as by
    its key (``datamodule.path``, ``shards.val_path``, ``cache_dir``, ``ckpt_path``, ``paths.*``, URLs), and
    any value holding one of ``names`` (files and folders of the data, see ``data_names``), since folder and
    file names may carry a patient's name.
    With ``class_names``: the class names of a class-conditional model (``cond.classes``, the label map read
    from folder names or a CSV column, which may name patients or sites); the class count stays.
    """
    names = names or set()

    def private_value(key: str, node) -> bool:
        if node is None:
            return False
        if key.lower().endswith(PATH_KEY_ENDINGS) or looks_like_path(node):
            return True
        return isinstance(node, str) and any(n in node for n in names)

    def walk(node, key=""):
        if isinstance(node, dict):
            if class_names and key == "cond" and node.get("classes") is not None:
                node = {**node, "classes": REDACTED}
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, key) for v in node]
        if data_path and private_value(key, node):
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
