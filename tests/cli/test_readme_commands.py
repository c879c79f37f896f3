"""Every ``python -m`` command in the code blocks of README.md and every page under docs/ parses as typed.

Hydra commands (``src.train``, the overrides of ``benchmarks.train_throughput``) are composed with their
overrides; argparse tools parse their flags with their own parser; ``src.sample`` with its own parser.
As bash would, ``~`` at the start of a word and ``$HOME`` become a temporary home folder (``~`` after ``=``
is left for the project to expand, as in a real shell). Synopsis notation is read as a user would type it:
``[optional parts]`` are typed (or left out when they only say ``overrides...``), ``a|b|c`` is typed as
``a``, ``<run>`` as a folder name.
"""

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose
from tests.helpers.cli_parsers import capture_parser

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NOT_OURS = {"pytest", "pip"}


def code_lines(text: str):
    """(line number, line) of code: fenced blocks and indented (4+ spaces) blocks, continuations joined."""
    out, fenced, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")) and not pending:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def commands():
    found = []
    for doc in DOCS:
        for number, line in code_lines(doc.read_text()):
            for part in line.split("&&"):
                match = re.search(r"(?:^|\s)(?:\S*/)?python -m (\S+)(.*)$", part)
                if match and match.group(1) not in NOT_OURS:
                    found.append(pytest.param(match.group(1), match.group(2),
                                              id=f"{doc.relative_to(ROOT)}:{number}"))
    return found


def as_typed(rest: str, home: Path) -> list[str]:
    rest = rest.replace("<run>", "run")
    # a synopsis' [optional part]; key=[1,2] (or {key:[1,2]}) is a Hydra list value
    rest = re.sub(r"(?<![=:,])\[([^\]]*)\]", lambda m: "" if "..." in m.group(1) else m.group(1), rest)
    words = []
    for word in shlex.split(rest.replace("$HOME", str(home)), comments=True):
        if word == "~" or word.startswith("~/"):
            word = str(home) + word[1:]
        if "|" in word and "://" not in word:
            key, eq, value = word.rpartition("=")
            word = key + eq + value.split("|")[0]
        words.append(word)
    return words


def test_the_readme_commands_are_found():
    found = {p.values[0] for p in commands()}
    assert {"src.train", "src.sample", "src.reconstruct", "datamodules.shards"} <= found


def test_every_docs_page_is_read():
    """The pages moved into docs/guide, docs/design and docs/studies are all checked."""
    pages = {doc.relative_to(ROOT).as_posix() for doc in DOCS}
    assert {"docs/guide/bad_inputs.md", "docs/design/mri.md", "docs/studies/reconstruction.md"} <= pages
    ids = {p.id.split(":")[0] for p in commands()}
    assert {"README.md", "docs/studies/image_quality.md", "docs/design/mri.md"} <= ids


@pytest.mark.parametrize("module,rest", commands())
def test_readme_command_parses_as_typed(module, rest, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    args = as_typed(rest, home)
    from src.config import expand_home

    if module == "src.train":
        compose(expand_home(args))
    elif module == "src.sample":
        from src.sample import parse_args

        parse_args(expand_home(args))
    elif module == "src.env_check":
        assert not args, "src.env_check takes no arguments"
    else:
        parser = capture_parser(module, monkeypatch)
        if module == "benchmarks.train_throughput":  # its flags, then Hydra overrides for the run
            _, overrides = parser.parse_known_args(args)
            assert not [o for o in overrides if o.startswith("-")], overrides
            compose(expand_home(overrides))
        else:
            parser.parse_args(args)
