"""Shared argparse pieces for the project's command-line tools."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help only when there is one worth reading (not None, not False),
    and not when the help already speaks of its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)
