"""``python -m src.report RUN_DIR [RUN_DIR ...] --out report.html [--wandb ENTITY/PROJECT]`` (see ``cli``)."""

import sys

from .cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
