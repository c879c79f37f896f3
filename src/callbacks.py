"""Moved to ``src/runtime/callbacks.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import callbacks

sys.modules[__name__] = callbacks  # one module under both names: attributes, monkeypatching and identity agree
