"""Moved to ``src/runtime/preemption.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import preemption

sys.modules[__name__] = preemption  # one module under both names: attributes, monkeypatching and identity agree
