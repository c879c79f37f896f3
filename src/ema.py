"""Moved to ``src/runtime/ema.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import ema

sys.modules[__name__] = ema  # one module under both names: attributes, monkeypatching and identity agree
