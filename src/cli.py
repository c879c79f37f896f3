"""Shared argparse pieces for the project's command-line tools: one way to refuse bad input and one set of
exit statuses (``src.options``: 0 done, 2 bad input or option, 3 a run that stopped itself on non-finite
values, 130/143 Ctrl-C/SIGTERM)."""

from __future__ import annotations

import argparse
import sys

from .errors import ProjectError
from .options import EXIT_BAD_INPUT, check_output_file, check_output_folder


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help only when there is one worth reading (not None, not False),
    and not when the help already speaks of its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse with a bad option reported as one line naming it (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")  # as the tools' own errors


ArgumentParser = OneLineParser  # the tools build theirs under argparse's own name


def refuse(error: Exception | str, code: int = EXIT_BAD_INPUT) -> None:
    """A user-facing problem as one line on stderr and exit status ``code`` (2: ``EXIT_BAD_INPUT``). The
    ``SystemExit`` carries the line too, so ``str()`` of it is the message for callers of ``main(argv)``."""
    message = error if isinstance(error, str) else f"error: {error}"
    print(message, file=sys.stderr, flush=True)
    stop = SystemExit(message)
    stop.code = code  # the interpreter exits with this status (it has printed the line above)
    raise stop from None


def check_outputs(args: argparse.Namespace, files=(), folders=()) -> None:
    """The output files and folders that ``args`` names (attribute names; None: not given), checked to be
    writable before any work starts (``src.options``); nothing is created by the check."""
    for attr in files:
        value = getattr(args, attr, None)
        if value is not None:
            check_output_file(value, f"--{attr.replace('_', '-')}")
    for attr in folders:
        value = getattr(args, attr, None)
        if value is not None:
            check_output_folder(value, f"--{attr.replace('_', '-')}")


def run_tool(build_parser, run, argv=None, files=(), folders=()):
    """``run(args)`` of a tool's parsed ``argv``, after the outputs it names (``files``, ``folders``:
    attribute names) are checked writable; the project's own errors become one line and exit status 2
    (anything else stays a traceback: it is a bug)."""
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args, files, folders)
        return run(args)
    except ProjectError as e:
        refuse(e)
