"""Every command-line flag of every argparse tool says what it does, and no help line reads "(default: None)"."""

import argparse

import pytest

from tests.helpers.cli_parsers import argparse_modules, capture_parser


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
