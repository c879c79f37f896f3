"""Samples per second of each domain's training pipeline, from shards against the same data as a folder.

    python benchmarks/data_throughput.py [--domains image,audio,mri] [--files 512] [--batches 30]

For every domain whose module supports shards, writes ``--files`` generated files to a temporary folder,
packs them with ``datamodules.shards``, and times ``train_dataloader()`` (decode, transforms, collation; no
model) with 0, 1 and 2 workers after two warm-up batches. A domain without shard support is reported as
skipped. Prints one table; nothing is written besides the temporary data.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.shards import write_shards  # noqa: E402
from src.domains import build_datamodule, shard_codec  # noqa: E402
from src.errors import DataError  # noqa: E402


def make_images(root: Path, n: int) -> None:
    from PIL import Image

    from src.domains.image.data import SyntheticShapes

    shapes = SyntheticShapes(n, 128, 3, seed=0)
    for i in range(n):
        arr = ((shapes.render(i).transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(arr).save(root / f"{i:05d}.png")


def make_audio(root: Path, n: int) -> None:
    import soundfile as sf

    t = np.arange(32000) / 16000
    for i in range(n):
        sf.write(root / f"{i:05d}.wav", 0.3 * np.sin(2 * np.pi * (110 + 3 * i) * t).astype(np.float32), 16000)


def make_mri(root: Path, n: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    for i in range(n):
        vol = rng.normal(size=(64, 64, 32)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"{i:05d}.nii.gz")


# domain -> (file maker, datamodule settings); a new domain adds one entry
DOMAINS = {
    "image": (make_images, {"resolution": 64, "channels": 3}),
    "audio": (make_audio, {}),
    "mri": (make_mri, {}),
}


def samples_per_second(domain: str, path: Path, settings: dict, workers: int, batch_size: int,
                       batches: int) -> float:
    dm = build_datamodule({"name": domain, "path": str(path), "batch_size": batch_size,
                           "num_workers": workers, "persistent_workers": False, **settings}, seed=0)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    for _ in range(2):  # worker start-up and first shard opens are not throughput
        next(it)
    t0 = time.perf_counter()
    n = sum(next(it)["x"].shape[0] for _ in range(batches))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", default=",".join(DOMAINS), help="comma list of domains to time")
    ap.add_argument("--files", type=int, default=512, help="generated files per domain")
    ap.add_argument("--batches", type=int, default=30, help="timed batches (after two warm-up batches)")
    ap.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    ap.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts to time")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"{args.files} files, batch {args.batch_size}, {args.batches} timed batches after 2 warm-up")
    print(f"{'domain':8} {'source':7} " + " ".join(f"{f'{w} workers':>12}" for w in workers))
    for domain in args.domains.split(","):
        make, settings = DOMAINS[domain]
        try:
            shard_codec(domain)
        except DataError as e:
            print(f"{domain:8} skipped: {e}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "folder", Path(tmp) / "shards"
            src.mkdir()
            make(src, args.files)
            write_shards(domain, src, out, max_count=128, overwrite=True)
            for name, path in (("folder", src), ("shards", out)):
                rates = [samples_per_second(domain, path, settings, w, args.batch_size, args.batches)
                         for w in workers]
                print(f"{domain:8} {name:7} " + " ".join(f"{r:12.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
