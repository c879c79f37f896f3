"""Pack a folder into webdataset shards: the command line, an entry point over ``datamodules/webshards.py``.

    python -m datamodules.shards --domain image --src ~/my_pngs --out ~/my_shards [--max-count 1000]
        [--max-size 256MB] [--val-fraction 0.05] [--seed 0] [--overwrite]
        [--labels none|folders|csv] [--labels-csv FILE.csv] [--labels-column label]
        [--captions none|sidecar|csv] [--captions-csv FILE.csv] [--captions-column caption]

An entry point sits above the domains, so this module (unlike the shard reader) may ask the domain registry
which codec ``--domain`` names. The reader's and writer's names are re-exported, so
``from datamodules.shards import resolve_shards`` keeps working; the format is documented in
``datamodules/webshards.py``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from src.cli import ArgumentParser
from src.domains import shard_codec, shard_codecs
from src.errors import ProjectError
from src.options import EXIT_BAD_INPUT, SEED, Number, Whole, check_output_folder

from .shard_sources import (
    SUMMARY,
    TAR_SUFFIXES,
    TRAIN_PREFIX,
    VAL_PREFIX,
    count_samples,
    expand,
    is_shard_path,
    is_url,
    resolve_shards,
    shard_counts,
    shard_name,
    summary_classes,
    summary_source,
)
from .webshards import pack_folder, parse_size


def write_shards(domain: str, src: str | Path, out: str | Path, max_count: int = 1000,
                 max_size: int | str = "256MB", val_fraction: float = 0.05, seed: int = 0,
                 overwrite: bool = False, labels: str = "none", labels_csv: str | Path | None = None,
                 labels_column: str = "label", captions: str = "none", captions_csv: str | Path | None = None,
                 captions_column: str = "caption") -> dict:
    """``pack_folder`` with the shard codec the registry holds for ``domain``; returns the summary."""
    return pack_folder(shard_codec(domain), domain, src, out, max_count=max_count, max_size=max_size,
                       val_fraction=val_fraction, seed=seed, overwrite=overwrite, labels=labels,
                       labels_csv=labels_csv, labels_column=labels_column, captions=captions,
                       captions_csv=captions_csv, captions_column=captions_column)


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m datamodules.shards",
                                 description="Pack a folder into webdataset tar shards for streaming.")
    ap.add_argument("--domain", required=True, help=f"one of {', '.join(shard_codecs())}")
    ap.add_argument("--src", required=True, help="folder of source files (searched recursively)")
    ap.add_argument("--out", required=True, help="folder for shard-*.tar, val-*.tar and summary.json")
    ap.add_argument("--max-count", type=Whole(1).arg("--max-count"),
                    default=1000, help="samples per shard at most (default 1000)")
    ap.add_argument("--max-size", default="256MB", help="bytes per shard at most, e.g. 256MB, 1GB")
    ap.add_argument("--val-fraction", type=Number(0.0, 1.0, high_open=True).arg("--val-fraction"), default=0.05,
                    help="share held out in val-*.tar; match datamodule.val_fraction (default 0.05)")
    ap.add_argument("--seed", type=SEED.arg("--seed"),
                    default=0, help="seed of the train/val split; match the run's seed")
    ap.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    ap.add_argument("--labels", default="none", choices=("none", "folders", "csv"),
                    help="class labels in each sample's json: folders (first-level subfolder) or csv")
    ap.add_argument("--labels-csv", default=None, help="with --labels csv: CSV with a file column (relative "
                    "to --src) and a label column")
    ap.add_argument("--labels-column", default="label", help="the CSV's label column (default label)")
    ap.add_argument("--captions", default="none", choices=("none", "sidecar", "csv"),
                    help="a KEY.txt caption per sample: sidecar (FILE.txt beside each file) or csv")
    ap.add_argument("--captions-csv", default=None, help="with --captions csv: CSV with a file column (relative "
                    "to --src) and a caption column")
    ap.add_argument("--captions-column", default="caption", help="the CSV's caption column (default caption)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        check_output_folder(args.out, "--out")
        parse_size(args.max_size)
        s = write_shards(args.domain, args.src, args.out, args.max_count, args.max_size, args.val_fraction,
                         args.seed, args.overwrite, args.labels, args.labels_csv, args.labels_column,
                         args.captions, args.captions_csv, args.captions_column)
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    n_shards = {k: sum(1 for v in s["shards"].values() if v["split"] == k) for k in ("train", "val")}
    print(f"packed {s['samples']['train']} training samples into {n_shards['train']} shards and "
          f"{s['samples']['val']} validation samples into {n_shards['val']} shards under {args.out}")
    if s["skipped"]:
        print(f"skipped {len(s['skipped'])} unreadable files, e.g. "
              + "; ".join(f"{x['path']} ({x['reason']})" for x in s["skipped"][:3]))
    if s.get("classes"):
        print(f"labels: {len(s['classes'])} classes ({', '.join(s['classes'][:10])}"
              f"{', ...' if len(s['classes']) > 10 else ''})")
    print(f"summary: {Path(args.out) / SUMMARY}")
    print(f"train with: python -m src.train domain={args.domain} datamodule.path={args.out}"
          + (" cond=class" if s.get("classes") else " cond=text" if args.captions != "none" else ""))
    return 0


__all__ = ["SUMMARY", "TAR_SUFFIXES", "TRAIN_PREFIX", "VAL_PREFIX", "build_parser", "count_samples", "expand",
           "is_shard_path", "is_url", "main", "pack_folder", "parse_size", "resolve_shards", "shard_counts",
           "shard_name", "summary_classes", "summary_source", "write_shards"]


if __name__ == "__main__":
    sys.exit(main())

