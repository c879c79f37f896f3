"""Small helpers shared by the benchmarks: machine description, robust timing summaries, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch


def machine() -> dict:
    info = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def write_json(path: str | Path | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, TFLOP/s; first matching name wins.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"bf16": 835.0, "fp16": 835.0},
    "H200": {"bf16": 989.0, "fp16": 989.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0},
    "H100": {"bf16": 989.0, "fp16": 989.0},
    "A100": {"bf16": 312.0, "fp16": 312.0},
}


def peak_tflops(device_name: str, precision: str, fallback: float | None = None) -> float | None:
    """The device's peak for ``precision`` (bf16|fp16) from PEAK_TFLOPS, else ``fallback`` (None: no MFU)."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name and precision in peaks:
            return peaks[precision]
    return fallback


def precision_name(trainer_precision: str) -> str:
    """Lightning's precision string -> bf16 | fp16 | fp32."""
    p = str(trainer_precision)
    return "bf16" if p.startswith("bf16") else "fp16" if p.startswith("16") else "fp32"


def use_compile_backend(name: str) -> None:
    """perf.compile calls Module.compile(); give it this backend (aot_eager: dynamo and AOT autograd, no codegen)."""
    import functools

    torch.nn.Module.compile = functools.partialmethod(torch.nn.Module.compile, backend=name)


# --tiny sizes (train_throughput: Hydra overrides per domain; recon_speed: its options), kept here so that
# benchmarks/gpu_check.py can name them without importing the benchmarks
TINY_TRAIN: dict[str, list[str]] = {
    "common": ["backbone.preset=tiny", "datamodule.batch_size=4", "datamodule.num_workers=0"],
    "image": ["datamodule.resolution=16", "datamodule.builtin_size=64"],
    "audio": ["datamodule.clip_seconds=0.1", "datamodule.builtin_size=32"],
    "mri": ["datamodule.shape=[16,16,16]", "datamodule.builtin_size=6"],
}
TINY_RECON = {"size": 32, "preset": "tiny", "steps": 3, "slices": 2, "batch_size": 2, "cs_iters": 5}
