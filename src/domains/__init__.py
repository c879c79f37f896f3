"""The domains the engine trains on: the one table of built-in domains, plus plugins.

A domain is a package exporting ``DOMAIN``, a ``src.domains.registry.Domain`` record of its parts. The
built-ins are listed in ``BUILTIN``; more come from ``DIFFUSION_DOMAINS`` (comma-separated importable
modules, each exporting ``DOMAIN``) and from the Python entry-point group ``diffusion_framework.domains``
(each entry point loads a ``Domain`` or a module exporting ``DOMAIN``). This registry builds a domain's
parts (``build_datamodule``, ``build_media``, ``shard_codec``); the engine and the shared data layer never
import it, entry points (``src.train``, ``src.sample``, ``python -m datamodules.shards``) and applications
ask it and hand the parts down.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from src.errors import ConfigError, DataError
from src.registry import Registry

from .registry import Domain

# the one table of built-in domains: name -> package exporting DOMAIN
BUILTIN: dict[str, str] = {
    "image": "src.domains.image",
    "audio": "src.domains.audio",
    "mri": "src.domains.mri",
}
ENV_VAR = "DIFFUSION_DOMAINS"
ENTRY_POINT_GROUP = "diffusion_framework.domains"


def _record(obj, where: str) -> Domain:
    record = getattr(obj, "DOMAIN", obj)
    if not isinstance(record, Domain):
        raise ConfigError(f"{where} exports no DOMAIN (a src.domains.registry.Domain record); define one.")
    return record


def _plugin_module(name: str) -> Domain:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):
            raise ConfigError(f"{ENV_VAR} names module '{name}', which cannot be imported; fix the name or "
                              "put its folder on PYTHONPATH.") from None
        raise
    return _record(module, f"Module '{name}' (from {ENV_VAR})")


def plugins() -> list[Domain]:
    """Domains named by ``DIFFUSION_DOMAINS`` and by installed entry points, in that order."""
    found = [_plugin_module(n.strip()) for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.append(_record(ep.load(), f"Entry point '{ep.name}' of {ENTRY_POINT_GROUP}"))
    return found


def all_domains() -> dict[str, Domain]:
    """Every known domain by name: the built-ins, then plugins (which may not reuse a built-in name)."""
    table = {name: _record(importlib.import_module(pkg), pkg) for name, pkg in BUILTIN.items()}
    for d in plugins():
        if d.name in BUILTIN:
            raise ConfigError(f"Plugin domain '{d.name}' reuses a built-in domain's name; rename it.")
        table[d.name] = d
    return table


def get_domain(name: str, key: str = "domain.name") -> Domain:
    return Registry(key, all_domains()).get(name)


def parts(part: str, key: str, error: type[Exception] = ConfigError) -> Registry:
    """The allow-list behind one config key: domain name -> that domain's ``part`` (domains that have one).

    Parts are imported only when chosen, so listing the choices never imports a domain's code."""
    return Registry(key, {n: getattr(d, part) for n, d in all_domains().items() if getattr(d, part) is not None},
                    error)


def build_datamodule(cfg: dict, seed: int = 0):
    """The ``DiffusionDataModule`` of the domain ``cfg["name"]`` names (``datamodule.*`` keys)."""
    return parts("datamodule", "datamodule.name", DataError).build(cfg, seed=seed)


def build_media(cfg: dict):
    """The media writer of the domain ``cfg["kind"]`` names (``media.*`` keys; old checkpoints name media so)."""
    return parts("media", "media.kind").build(cfg)


def shard_codecs() -> Registry:
    """``--domain`` name -> the module packing that domain's shards (the domains that have one)."""
    return parts("shard_codec", "--domain", DataError)


def shard_codec(name: str):
    """The module packing shards for domain ``name`` (see ``datamodules/webshards.py``), or a DataError
    listing the domains that have one."""
    mod = shard_codecs().get(name)
    if not getattr(mod, "EXTENSIONS", None):
        raise DataError(f"domain {name} has no shard support yet ({mod.__name__} defines no EXTENSIONS).")
    return mod


def plugin_config_dirs() -> list[str]:
    """Config folders of plugin domains, for Hydra's search path (built-ins live in ``configs/``)."""
    return [d.config_dir for d in all_domains().values() if d.config_dir]


__all__ = ["BUILTIN", "Domain", "ENTRY_POINT_GROUP", "ENV_VAR", "all_domains", "build_datamodule", "build_media",
           "get_domain", "parts", "plugin_config_dirs", "plugins", "shard_codec", "shard_codecs"]
