"""Every GPU measurement the docs still lack, in one timed run, as one markdown table.

    bash benchmarks/gpu_check.sh [--tiny] [--peak-tflops X] [--budget-s 450] [--only image,recon] [--out FILE]

Runs, each in its own process under its own time limit and all within --budget-s: framework vs hand-written
loop vs diffusers training throughput and MFU in bf16 (image, audio, MRI; benchmarks/train_throughput.py),
DDP vs FSDP2 peak memory at world size 1, reconstruction seconds per 128x128 slice at the recon_prior defaults
(benchmarks/recon_speed.py)
and the torch.compile speedup. Writes FILE (default: $OUT/gpu_check.md when $OUT is set, else
benchmarks/results/gpu_check.md) and beside it gpu_check.json (raw results) and gpu_check.log (every
step's output). A step that fails, times out or lacks a package still has its rows, saying so.
`--tiny` (or TINY=1): the same code on the CPU in tiny sizes, fp32, MFU against a nominal --peak-tflops (1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.fileio import atomic_write_text

from .common import TINY_RECON, TINY_TRAIN, peak_tflops

ROOT = Path(__file__).resolve().parents[1]
RESERVE_S = 5.0     # kept back from the budget to write the table
MIN_STEP_S = 15.0   # a step with less time left than this is not started


@dataclass
class Step:
    name: str
    module: str
    args: list[str]
    budget_s: float


class Missing(Exception):
    """A value that could not be measured; its message is what the table says instead."""


class Results:
    def __init__(self):
        self.data: dict[str, dict] = {}
        self.status: dict[str, str] = {}

    def get(self, step: str) -> dict:
        if step in self.data:
            return self.data[step]
        raise Missing(self.status.get(step, "not run"))

    def pipeline(self, step: str, name: str) -> dict:
        res = self.get(step)
        for row in res.get("rows", []):
            if row["pipeline"] == name:
                return row
        if name in res.get("skipped", {}):
            raise Missing(f"not installed: {res['skipped'][name]}")
        raise Missing(failure_reason(None, res.get("failed", {}).get(name, "no result")))

    def median(self, step: str, name: str) -> float:
        return self.pipeline(step, name)["step_time_s"]["median"]


# the H200 sizes (a step each; the tiny ones are common.TINY_TRAIN / TINY_RECON)
FULL_TRAIN = {
    "image": ["backbone.preset=small", "datamodule.resolution=64", "datamodule.batch_size=128"],
    "audio": ["backbone.preset=base", "datamodule.clip_seconds=0.5", "datamodule.batch_size=16"],
    "mri": ["backbone.preset=small", "datamodule.shape=[32,32,32]", "datamodule.batch_size=8"],
    "memory": ["backbone.preset=base", "datamodule.resolution=64", "datamodule.batch_size=64"],
}
# the experiment=recon_prior defaults at the size of the CPU figure in docs/studies/reconstruction.md
FULL_RECON = {"size": 128, "preset": "compact", "family": "edm", "steps": 20, "num_samples": 4, "resample": 4,
              "refine_tv": 0.15, "slices": 8, "batch_size": 8, "cs_iters": 300}
WORKERS = ["datamodule.num_workers=6"]  # on the GPU machine's 16 cores, so the step never waits for data


def label(overrides: list[str]) -> str:
    """``backbone.preset=small datamodule.batch_size=8`` -> ``preset=small, batch_size=8`` (data sizes only)."""
    skip = ("num_workers", "builtin_size")
    pairs = (o.split("=", 1) for o in overrides if not any(k in o for k in skip))
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in pairs)


def plan(tiny: bool, peak: float | None) -> tuple[list[Step], list[tuple]]:
    """The steps (in order of importance: later ones are the first to lose their time) and the table rows."""
    dev = ["--tiny", "--device", "cpu"] if tiny else ["--device", "cuda"]
    prec = "fp32" if tiny else "bf16"
    sizes = {d: [] if tiny else [*FULL_TRAIN[d], *WORKERS] for d in FULL_TRAIN}
    shown = {d: label(TINY_TRAIN["common"] + TINY_TRAIN.get(d, TINY_TRAIN["image"]) if tiny else FULL_TRAIN[d])
             for d in FULL_TRAIN}
    base_train = ["--in-process", *dev, "--precision", prec, *(["--peak-tflops", str(peak)] if peak else [])]
    train = [*base_train, *([] if tiny else ["--warmup", "5", "--steps", "30", "--repeats", "2"])]
    mem = [*dev, "--in-process", "--pipelines", "framework", *([] if tiny else ["--warmup", "2", "--steps", "5",
                                                                                  "--repeats", "1"])]
    compiled = ["--compile-backend", "aot_eager", "--warmup", "2"] if tiny else ["--warmup", "10", "--steps", "30",
                                                                                 "--repeats", "1"]
    recon_opts = TINY_RECON if tiny else FULL_RECON
    recon = [*dev, "--warmup", *([] if tiny else [f"--{k.replace('_', '-')}={v}" for k, v in FULL_RECON.items()])]
    tt = "benchmarks.train_throughput"
    steps = [
        Step("image", tt, [*train, "--pipelines", "framework,loop,diffusers", "domain=image", *sizes["image"]], 150),
        Step("memory_ddp", tt, [*mem, "domain=image", "trainer=ddp", *sizes["memory"]], 60),
        Step("memory_fsdp", tt, [*mem, "domain=image", "trainer=fsdp", *sizes["memory"]], 60),
        Step("recon", "benchmarks.recon_speed", recon, 60),
        Step("audio", tt, [*train, "--pipelines", "framework,loop", "domain=audio", *sizes["audio"]], 60),
        Step("mri", tt, [*train, "--pipelines", "framework,loop", "domain=mri", *sizes["mri"]], 75),
        Step("recon_bf16", "benchmarks.recon_speed", [*recon, "--precision", "bf16"], 45),
        Step("compile", tt, [*base_train, *compiled, "--pipelines", "framework", "domain=image",
                             "perf.compile=true", *sizes["image"]], 120),
    ]
    mfu_unit = (f"% of {peak:g} TFLOP/s" + (" (nominal)" if tiny else "")) if peak else "%"
    rows: list[tuple] = []
    for domain, pipes in (("image", ("framework", "loop", "diffusers")), ("audio", ("framework", "loop")),
                          ("mri", ("framework", "loop"))):
        setting = f"{domain}, {shown[domain]}, {prec}"
        for p in pipes:
            rows.append(("training throughput", f"{setting}, {p}", "samples/s",
                         lambda r, d=domain, p=p: r.pipeline(d, p)["samples_per_s"]))
        for p in pipes:
            rows.append(("MFU", f"{setting}, {p}", mfu_unit,
                         lambda r, d=domain, p=p: pct(r.pipeline(d, p)["mfu"], "no peak known: pass --peak-tflops")))
        rows.append(("framework overhead vs hand-written loop", f"{setting}, step time (goal: <= 3)", "%",
                     lambda r, d=domain: 100 * (r.median(d, "framework") / r.median(d, "loop") - 1)))
        if "diffusers" in pipes:
            rows.append(("framework speed vs diffusers", f"{setting}, diffusers step time / framework step time "
                         "(goal: >= 1.25)", "x",
                         lambda r, d=domain: r.median(d, "diffusers") / r.median(d, "framework")))
    mem_setting = f"image, {shown['memory']}, {'fp32' if tiny else 'bf16 (DDP: autocast; FSDP2: its bf16 policy)'}"
    mem_unit = "MB (peak RSS of the process)" if tiny else "MB (torch.cuda.max_memory_allocated)"
    for name, strategy in (("memory_ddp", "DDP"), ("memory_fsdp", "FSDP2")):
        rows.append(("peak memory per GPU", f"{strategy}, world size 1 (one process), {mem_setting}", mem_unit,
                     lambda r, n=name: r.pipeline(n, "framework")["peak_memory_mb"]))
    rows.append(("FSDP2 / DDP peak memory", f"world size 1, {mem_setting}", "x",
                 lambda r: r.pipeline("memory_fsdp", "framework")["peak_memory_mb"]
                 / r.pipeline("memory_ddp", "framework")["peak_memory_mb"]))
    o = recon_opts
    recon_setting = (f"{o['size']}x{o['size']}, UNet {o['preset']} (random weights), {o['steps']} steps, "
                     f"{o.get('num_samples', 1)} sample(s), {o.get('resample', 0)} time-travel repeat(s), "
                     f"{o['slices']} slices in batches of {o['batch_size']}, 1 coil")
    for key, method in (("diffusion", "diffusion prior, fp32"),
                        ("compressed_sensing", f"compressed sensing (TV, {o['cs_iters']} iterations, CPU)"),
                        ("zero_filled", "zero-filled")):
        rows.append(("reconstruction time", f"{method}, {recon_setting}", "s per slice",
                     lambda r, k=key: r.get("recon")["seconds_per_slice"][k]))
    rows.append(("reconstruction time", f"diffusion prior, bf16 autocast, {recon_setting}",
                 "s per slice", lambda r: r.get("recon_bf16")["seconds_per_slice"]["diffusion"]))
    backend = "aot_eager backend (--tiny)" if tiny else "inductor"
    rows.append(("torch.compile speedup", f"image, {shown['image']}, {prec}, framework, perf.compile=true, "
                 f"{backend}", "x", lambda r: r.median("image", "framework") / r.median("compile", "framework")))
    return steps, rows


def pct(fraction: float | None, why: str) -> float:
    if fraction is None:
        raise Missing(f"n/a: {why}")
    return 100 * fraction


def fmt(value: float) -> str:
    """Three significant figures at most, never in exponent notation."""
    a = abs(value)
    if a >= 1:
        return f"{value:.0f}" if a >= 100 else f"{value:.1f}" if a >= 10 else f"{value:.2f}"
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


def cell(fn, results: Results) -> str:
    try:
        return fmt(float(fn(results)))
    except Missing as m:
        return str(m).replace("|", "/")


def failure_reason(rc: int | None, log: str) -> str:
    """What the table says for a failed step (exit code rc) or pipeline (rc None): its last error line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    last = (errors or lines or ["no output"])[-1]
    missing = re.match(r"^ModuleNotFoundError: No module named '([^']+)'", last)
    if missing:
        return f"not installed: {missing.group(1).split('.')[0]}"
    return f"failed{'' if rc is None else f' (exit {rc})'}: {last[:120]}"


def run_step(step: Step, timeout: float, work: Path, env: dict) -> tuple[str | None, float]:
    """Run one step in its own process group (a timeout ends its children too); None status means success."""
    out_json, log = work / f"{step.name}.json", work / f"{step.name}.log"
    cmd = [sys.executable, "-m", step.module, *step.args, "--json", str(out_json)]
    t0 = time.monotonic()
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return f"timed out after {timeout:.0f} s", time.monotonic() - t0
    seconds = time.monotonic() - t0
    if rc != 0 or not out_json.exists():
        return failure_reason(rc, log.read_text(errors="replace")), seconds
    return None, seconds


def render(header: dict, rows: list[tuple], results: Results, steps: list[str], timings: dict) -> str:
    lines = ["# GPU check", "",
             " | ".join(f"{k}: {v}" for k, v in header.items()), "",
             "| measurement | setting | value | unit |", "| --- | --- | --- | --- |"]
    lines += [f"| {m} | {s} | {cell(fn, results)} | {u} |" for m, s, u, fn in rows]
    lines += ["", "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {results.status.get(name, 'ok').replace('|', '/')} | "
              f"{timings[name]:.0f} |" if name in timings else f"| {name} | {results.status.get(name)} | - |"
              for name in steps]
    return "\n".join(lines) + "\n"


def default_out(tiny: bool) -> Path:
    if os.environ.get("OUT"):  # the device tool's folder of files that come back
        return Path(os.environ["OUT"]) / "gpu_check.md"
    # a CPU check in the work tree never overwrites the GPU table
    return ROOT / "benchmarks" / "results" / ("gpu_check_tiny.md" if tiny else "gpu_check.md")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the same code on the CPU in tiny sizes (also TINY=1)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak for MFU when the device is not in benchmarks.common.PEAK_TFLOPS (--tiny: nominal, 1)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget for all steps together")
    ap.add_argument("--only", default=None, help="comma list of steps to run (the others' rows say 'not run')")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown file for the table (default: a file named after the device)")
    args = ap.parse_args(argv)
    tiny = args.tiny or os.environ.get("TINY") == "1"
    started = time.monotonic()
    import torch

    if not tiny and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible here; run it on a GPU machine, or pass --tiny for the CPU "
                 "check of the same code.")
    device = f"CPU ({platform.machine()}, --tiny)" if tiny else torch.cuda.get_device_name(0)
    peak = (args.peak_tflops or 1.0) if tiny else peak_tflops(device, "bf16", args.peak_tflops)
    steps, rows = plan(tiny, peak)
    wanted = set(args.only.split(",")) if args.only else {s.name for s in steps}
    unknown = wanted - {s.name for s in steps}
    if unknown:
        ap.error(f"unknown step {sorted(unknown)[0]}; choose from {', '.join(s.name for s in steps)}")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    results, timings = Results(), {}
    deadline = started + args.budget_s - RESERVE_S
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        for step in steps:
            left = deadline - time.monotonic()
            if step.name not in wanted:
                results.status[step.name] = "not run (--only)"
                continue
            if left < (5.0 if tiny else MIN_STEP_S):
                results.status[step.name] = "not run: time budget spent"
                continue
            status, timings[step.name] = run_step(step, min(step.budget_s, left), work, env)
            print(f"gpu_check: {step.name}: {status or 'ok'} ({timings[step.name]:.0f} s)", flush=True)
            if status:
                results.status[step.name] = status
            else:
                results.data[step.name] = json.loads((work / f"{step.name}.json").read_text())
        log = "\n".join((work / f"{s.name}.log").read_text(errors="replace")
                        for s in steps if (work / f"{s.name}.log").exists())
    header = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "total": f"{time.monotonic() - started:.0f} s"}
    out = args.out or default_out(tiny)
    atomic_write_text(out, render(header, rows, results, [s.name for s in steps], timings))
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"header": header, "results": results.data, "status": results.status, "seconds": timings}, indent=1))
    atomic_write_text(out.with_suffix(".log"), log)
    print(f"gpu_check: wrote {out}")


if __name__ == "__main__":
    main()
