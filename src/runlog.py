"""Moved to ``src/runtime/runlog.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import runlog

sys.modules[__name__] = runlog  # one module under both names: attributes, monkeypatching and identity agree
