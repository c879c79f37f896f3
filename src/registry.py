"""Allow-lists: the names a config may choose, each bound to a builder that is imported only when chosen.

Every "``name:`` picks an implementation" key of the project (backbones, objectives, samplers, schedules,
domains and their datamodules, media writers, metrics and shard codecs) goes through one ``Registry``, so a
checkpoint's own config can rebuild its parts without ever importing an arbitrary ``_target_``, and every
wrong name or key gets the same one-sentence error listing the choices.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ConfigError


def load_target(target: Any) -> Any:
    """``"package.module:attribute"`` imported; anything else (a class, a function) returned as it is."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def accepted_keys(factory: Callable) -> set[str] | None:
    """Keyword arguments ``factory`` takes, or None when it takes any (``**kwargs`` we cannot follow).

    A class's ``**kwargs`` that are handed to its base class are followed along the MRO, so a subclass
    of a base with a closed signature is itself closed.
    """
    inits = [c.__dict__["__init__"] for c in inspect.getmro(factory) if "__init__" in c.__dict__] \
        if inspect.isclass(factory) else [factory]
    keys: set[str] = set()
    for fn in inits:
        if fn is object.__init__:
            return keys
        params = inspect.signature(fn).parameters.values()
        keys |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return keys
        if not inspect.isclass(factory):
            return None
    return None


def check_keys(factory: Callable, cfg: dict, section: str, what: str, error: type[Exception] = ConfigError,
               given: tuple[str, ...] = ()) -> None:
    """An ``error`` naming the first key of ``cfg`` that ``factory`` does not take, and the keys it does."""
    keys = accepted_keys(factory)
    if keys is None:
        return
    unknown = sorted(set(cfg) - keys)
    if unknown:
        valid = ", ".join(sorted(keys - set(given)))
        raise error(f"Unknown key {section}.{unknown[0]} for {what}; remove it or use one of: {valid}.")


class Registry:
    """Names -> builders (objects or lazily imported ``"module:attr"`` strings) behind one config key.

    ``key`` is how messages name the choice (``backbone.name``, ``media.kind``, ``--domain``); ``error``
    is the project error raised for a wrong name or option (ConfigError, or DataError for data).
    """

    def __init__(self, key: str, entries: dict[str, Any] | None = None, error: type[Exception] = ConfigError):
        self.key, self.error = key, error
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str, target: Any) -> None:
        self._entries[name] = target

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: Any) -> Any:
        """The builder registered as ``name``, imported now; a one-sentence error listing the choices."""
        if name not in self._entries:
            raise self.error(f"Unknown {self.key} '{name}'; choose one of {', '.join(self._entries)}.")
        return load_target(self._entries[name])

    def build(self, cfg: dict, pick: str | None = None, ignore: tuple[str, ...] = (), **extra) -> Any:
        """Pop the name (``cfg[pick]``, default the last part of ``key``), drop ``ignore``d keys, check the
        rest against the builder's signature (the unknown key is named) and call it with them and ``extra``."""
        cfg = {k: v for k, v in dict(cfg).items() if k not in ignore}
        pick = pick or self.key.rpartition(".")[2]
        name = cfg.pop(pick, None)
        factory = self.get(name)
        section = self.key.rpartition(".")[0] or self.key
        check_keys(factory, cfg, section, f"{self.key}={name}", self.error, given=tuple(extra))
        return factory(**cfg, **extra)
