"""Shared argparse pieces for the project's command-line tools."""

from __future__ import annotations

import argparse
import sys

from .errors import ProjectError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help only when there is one worth reading (not None, not False),
    and not when the help already speaks of its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def run_tool(build_parser, run, argv=None):
    """``run(args)`` of a tool's parsed ``argv``; the project's own errors become one line and exit status 2
    (anything else stays a traceback: it is a bug)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
