"""Moved to ``src/runtime/threads.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import threads

sys.modules[__name__] = threads  # one module under both names: attributes, monkeypatching and identity agree
