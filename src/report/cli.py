"""``python -m src.report RUN_DIR [RUN_DIR ...] --out report.html [--wandb ENTITY/PROJECT]``: a thin parser over
``src.report.write_report``."""

from __future__ import annotations

import sys

from src.cli import ArgumentParser
from src.errors import ProjectError
from src.options import EXIT_BAD_INPUT, Whole, check_output_file

from .builder import write_report


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m src.report",
                                description="A self-contained HTML report of one or several training runs, "
                                            "and optionally the same report on a W&B server.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (paths.output_dir of training runs)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT",
                   help="also save a W&B report over these runs (uploaded with `wandb sync`) to ENTITY/PROJECT")
    p.add_argument("--title", help="title of the W&B report")
    p.add_argument("--max-sample-steps", type=Whole(1).arg("--max-sample-steps"), default=12,
                   help="sample steps shown per image run, evenly spread (a third of it for audio and MRI)")
    p.add_argument("--max-clips", type=Whole(1).arg("--max-clips"),
                   default=4, help="audio clips or MRI volumes shown per sample step")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_output_file(args.out, "--out")
        result = write_report(args.runs, args.out, wandb=args.wandb, title=args.title,
                              max_sample_steps=args.max_sample_steps, max_clips=args.max_clips)
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {result.html} ({result.html.stat().st_size / 2**20:.2f} MiB)")
    if result.wandb_url is not None:
        print(f"saved W&B report {result.wandb_url}")
    return 0
