"""Moved to ``src/runtime/distributed.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import distributed

sys.modules[__name__] = distributed  # one module under both names: attributes, monkeypatching and identity agree
