"""Moved to ``src/runtime/metrics_log.py`` (the training runtime); this name keeps old imports working."""

import sys

from src.runtime import metrics_log

sys.modules[__name__] = metrics_log  # one module under both names: attributes, monkeypatching and identity agree
