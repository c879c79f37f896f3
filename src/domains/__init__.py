"""The domains the engine trains on: the one table of built-in domains, plus plugins.

A domain is a package exporting ``DOMAIN``, a ``src.domains.registry.Domain`` record of its parts. The
built-ins are listed in ``BUILTIN``; more come from ``DIFFUSION_DOMAINS`` (comma-separated importable
modules, each exporting ``DOMAIN``) and from the Python entry-point group ``diffusion_framework.domains``
(each entry point loads a ``Domain`` or a module exporting ``DOMAIN``). The core (module, CLIs, callbacks,
shard writer) asks this registry and never names a domain.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from src.errors import ConfigError
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


def plugin_config_dirs() -> list[str]:
    """Config folders of plugin domains, for Hydra's search path (built-ins live in ``configs/``)."""
    return [d.config_dir for d in all_domains().values() if d.config_dir]


__all__ = ["BUILTIN", "Domain", "ENTRY_POINT_GROUP", "ENV_VAR", "all_domains", "get_domain", "parts",
           "plugin_config_dirs", "plugins"]
