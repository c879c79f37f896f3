"""The project's argparse tools, found in the tree, and the parser each one builds."""

import argparse
import importlib
import sys

from tests.conftest import ROOT

PACKAGES = ("src", "datamodules", "benchmarks", "scripts")


def argparse_modules() -> list[str]:
    """Dotted names of the project's modules that build an ArgumentParser (found, not listed by hand)."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "ArgumentParser(" in path.read_text(errors="replace"):
                names.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return names


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def capture_parser(module_name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, caught at the moment it parses (nothing of the tool runs)."""
    module = importlib.import_module(module_name)

    def catch(self, args=None, namespace=None):
        raise _Parsed(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        patch.setattr(sys, "argv", [module_name])
        try:
            module.main()
        except _Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"{module_name}.main() finished without parsing its arguments")
