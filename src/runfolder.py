"""Moved to ``src/runtime/runfolder.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import runfolder

sys.modules[__name__] = runfolder  # one module under both names: attributes, monkeypatching and identity agree
