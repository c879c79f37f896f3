"""Every command-line flag of every argparse tool says what it does, and no help line reads "(default: None)"."""

import argparse
import importlib
import sys
from pathlib import Path

import pytest

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

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    monkeypatch.setattr(sys, "argv", [module_name])
    try:
        module.main()
    except _Parsed as parsed:
        return parsed.parser
    raise AssertionError(f"{module_name}.main() finished without parsing its arguments")


def test_the_known_tools_are_found():
    found = argparse_modules()
    for name in ("src.reconstruct", "src.consolidate"):
        assert name in found
    assert any(name.endswith(".shards") for name in found)  # webdataset packing, wherever it lives


@pytest.mark.parametrize("module_name", argparse_modules())
def test_every_flag_has_help_and_no_none_default(module_name, monkeypatch):
    parser = capture_parser(module_name, monkeypatch)
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())]
    assert not missing, f"python -m {module_name}: no help text for {', '.join(missing)}"
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
