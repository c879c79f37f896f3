"""The record a domain package exports as ``DOMAIN``: where each of its parts lives.

Parts are ``"package.module:attribute"`` strings (or the objects themselves), imported only when a run
asks for them, so importing every domain's record to list the choices never pulls in one domain's heavy
dependencies (torchaudio, MONAI readers) for another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.registry import load_target

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Domain:
    """One kind of data the engine trains on.

    ``datamodule``: a ``DiffusionDataModule`` subclass, or a function of the ``datamodule.*`` keys returning
    one (``datamodule.name`` in configs is the domain name).
    ``media``: the writer class behind ``media.kind`` (``save(samples, out_dir, prefix) -> paths``, optional
    ``to_wandb(samples, key) -> dict``). ``metrics``: the class behind ``metrics.kind``,
    ``metrics(generated, real) -> dict[str, float]`` (None: no sample metrics). ``shard_codec``: the module
    ``python -m datamodules.shards --domain NAME`` packs with (``EXTENSIONS``, optional ``pack_sample`` and
    ``list_items``; see ``datamodules/shards.py``; None: no shards). ``config_dir``: a folder holding
    ``domain/<name>.yaml`` that ``src.train`` adds to Hydra's search path (None: the project's ``configs/``).
    ``sample_options``: extra ``key=default`` options of ``python -m src.sample`` for this domain's
    checkpoints, handed to ``sample_input(options, run_config, num, device, ckpt) -> (cond, shape)``.
    """

    name: str
    datamodule: Any
    media: Any
    metrics: Any = None
    shard_codec: Any = None
    config_dir: str | None = None
    description: str = ""
    sample_options: dict = field(default_factory=dict)
    sample_input: Any = None

    def load(self, part: str) -> Any:
        """The part named ``part`` (``"datamodule"``, ``"media"``, ...), imported now; None when absent."""
        target = getattr(self, part)
        return None if target is None else load_target(target)

    @property
    def config_file(self) -> Path:
        """The domain's default Hydra config (``domain=<name>``)."""
        return Path(self.config_dir or CONFIGS) / "domain" / f"{self.name}.yaml"
