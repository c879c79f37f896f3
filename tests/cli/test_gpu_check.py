"""benchmarks/gpu_check.sh: the one-table GPU check, run here in its --tiny CPU form, and how it reports gaps."""

import contextlib
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import Results, Step, failure_reason, plan, render, run_step

ROOT = Path(__file__).resolve().parents[2]
# what issue 12 asks the table to hold; each must appear whatever the plan's details
MEASUREMENTS = {"training throughput", "MFU", "framework overhead vs hand-written loop",
                "framework speed vs diffusers", "peak memory per GPU", "FSDP2 / DDP peak memory",
                "reconstruction time", "torch.compile speedup"}


def table_rows(text: str) -> list[list[str]]:
    body = text.split("| measurement | setting | value | unit |")[1].split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in body.strip().splitlines()[1:]]


def in_process_steps(monkeypatch):
    """A ``run_step`` that runs the step's module's ``main()`` in this process (same arguments, same JSON file):
    the code of each step without the start-up of an interpreter (``run_step`` itself: the shell run below)."""

    def run(step: Step, timeout: float, work: Path, env: dict) -> tuple[str | None, float]:
        module = importlib.import_module(step.module)
        threads, t0 = torch.get_num_threads(), time.monotonic()
        with (work / f"{step.name}.log").open("w") as log, contextlib.redirect_stdout(log), \
                monkeypatch.context() as m:
            m.setattr(sys, "argv", [step.module, *step.args, "--json", str(work / f"{step.name}.json")])
            m.setattr(torch.nn.Module, "compile", torch.nn.Module.compile)  # --compile-backend replaces it
            module.main()
        torch.set_num_threads(threads)
        torch._dynamo.reset()
        return None, time.monotonic() - t0

    monkeypatch.setattr(gpu_check, "run_step", run)


@pytest.mark.slow
def test_tiny_run_writes_every_row_with_numbers(tmp_path, monkeypatch):
    """The whole plan on the CPU: ``benchmarks/gpu_check.sh --tiny`` runs the steps whose numbers need a process
    of their own (peak memory of DDP and FSDP2) as the GPU check does, each in its own process; at the same time
    ``gpu_check.main`` runs every other step in this process. Each row is a number in exactly one of the two
    tables and says "not run (--only)" in the other."""
    own = ["memory_ddp", "memory_fsdp"]
    steps, _ = plan(tiny=True, peak=1.0)
    (tmp_path / "shell").mkdir()
    env = {**os.environ, "OUT": str(tmp_path / "shell"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    shell = subprocess.Popen(["bash", "benchmarks/gpu_check.sh", "--tiny", "--only", ",".join(own)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        in_process_steps(monkeypatch)
        others = [s.name for s in steps if s.name not in own]
        gpu_check.main(["--tiny", "--only", ",".join(others), "--out", str(tmp_path / "here" / "gpu_check.md")])
        # a guard against a hang, not a speed target
        output, _ = shell.communicate(timeout=1200)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    assert shell.returncode == 0, output[-3000:]

    expected = [(m, s) for m, s, _, _ in plan(tiny=True, peak=1.0)[1]]
    assert {m for m, _ in expected} == MEASUREMENTS
    assert sum(m == "training throughput" for m, _ in expected) == 7  # image x3, audio x2, mri x2
    tables = {}
    for where in ("shell", "here"):
        text = (tmp_path / where / "gpu_check.md").read_text()
        header = text.splitlines()[2]
        assert "device: CPU" in header and f"torch: {torch.__version__}" in header
        assert re.search(r"date: \d{4}-\d{2}-\d{2}", header)
        rows = table_rows(text)
        assert [(m, s) for m, s, _, _ in rows] == expected
        tables[where] = rows
        ran = own if where == "shell" else others
        step_rows = text.split("| step | status | seconds |")[1]
        assert step_rows.count("| ok |") == len(ran)
        assert step_rows.count("| not run (--only) |") == len(steps) - len(ran)
    assert "nominal" in next(r[3] for r in tables["here"] if r[0] == "MFU")

    has_diffusers = importlib.util.find_spec("diffusers") is not None
    for shell_row, here_row in zip(tables["shell"], tables["here"]):
        measurement, setting = shell_row[:2]
        memory = measurement in ("peak memory per GPU", "FSDP2 / DDP peak memory")
        value, other = (shell_row[2], here_row[2]) if memory else (here_row[2], shell_row[2])
        assert other == "not run (--only)", (measurement, setting, other)
        if not has_diffusers and "diffusers" in setting:
            assert value.startswith("not installed"), (setting, value)
            continue
        number = float(value)  # every cell measured: a number, not a reason
        assert math.isfinite(number), (measurement, setting, value)
        if measurement in ("training throughput", "peak memory per GPU", "reconstruction time", "MFU"):
            assert number > 0, (measurement, setting, value)

    raw = json.loads((tmp_path / "shell" / "gpu_check.json").read_text())
    assert raw["results"]["memory_fsdp"]["rows"][0]["strategy"] == "FSDP2Strategy"
    assert raw["results"]["memory_ddp"]["rows"][0]["strategy"] == "DDPStrategy"
    log = (tmp_path / "shell" / "gpu_check.log").read_text()  # every step's command and output
    assert log.count("-m benchmarks.train_throughput") == 2 and "trainer=ddp" in log and "trainer=fsdp" in log


def test_missing_steps_and_packages_still_have_their_rows():
    steps, rows = plan(tiny=False, peak=989.0)
    results = Results()
    step_time = {"median": 0.02, "min": 0.02, "max": 0.03, "n": 60}
    results.data["image"] = {
        "rows": [{"pipeline": "framework", "samples_per_s": 6400.0, "mfu": 0.31, "step_time_s": step_time},
                 {"pipeline": "loop", "samples_per_s": 6500.0, "mfu": None,
                  "step_time_s": {**step_time, "median": 0.0196}}],
        "skipped": {"diffusers": "diffusers is not installed"}, "failed": {}}
    results.data["memory_fsdp"] = {"rows": [{"pipeline": "framework", "peak_memory_mb": 9000.0,
                                             "step_time_s": step_time}]}
    results.status.update({"memory_ddp": "timed out after 60 s", "recon": failure_reason(
        1, "Traceback (most recent call last):\nModuleNotFoundError: No module named 'monai.networks'\n")})
    text = render({"device": "NVIDIA H200", "torch": "2.11.0", "date": "2026-12-02"}, rows, results,
                  [s.name for s in steps], {"image": 61.0, "memory_ddp": 60.0, "recon": 4.0})
    got = table_rows(text)
    assert [(m, s) for m, s, _, _ in got] == [(m, s) for m, s, _, _ in rows]

    def value(measurement: str, *parts: str) -> list[str]:
        return [v for m, s, v, _ in got if m == measurement and all(p in s for p in parts)]

    assert value("training throughput", "image", "framework") == ["6400"]
    assert value("MFU", "image", "framework") == ["31.0"]
    assert value("MFU", "image", "loop")[0].startswith("n/a")
    assert value("training throughput", "image", "diffusers") == ["not installed: diffusers is not installed"]
    overhead = value("framework overhead vs hand-written loop", "image")
    assert float(overhead[0]) == pytest.approx(100 * (0.02 / 0.0196 - 1), abs=0.01)
    assert value("framework speed vs diffusers")[0].startswith("not installed")
    assert value("training throughput", "audio") == ["not run", "not run"]
    assert value("FSDP2 / DDP peak memory") == ["timed out after 60 s"]
    assert value("peak memory per GPU", "DDP,") == ["timed out after 60 s"]
    assert value("peak memory per GPU", "FSDP2,") == ["9000"]
    assert set(value("reconstruction time", "fp32")) == {"not installed: monai"}
    assert value("torch.compile speedup") == ["not run"]
    assert "| memory_ddp | timed out after 60 s | 60 |" in text
    assert failure_reason(1, "RuntimeError: CUDA out of memory\n").startswith("failed (exit 1): RuntimeError")
    assert failure_reason(None, "ModuleNotFoundError: No module named 'diffusers'") == "not installed: diffusers"


def test_a_step_past_its_time_is_ended_with_its_children(tmp_path):
    (tmp_path / "sleeper.py").write_text(
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen(['sleep', '60'])\nopen({str(tmp_path / 'pid')!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    t0 = time.monotonic()
    status, seconds = run_step(Step("sleeper", "sleeper", [], 60), 3, tmp_path, env)
    assert status == "timed out after 3 s" and seconds < 20 and time.monotonic() - t0 < 20
    stat = Path(f"/proc/{int((tmp_path / 'pid').read_text())}/stat")
    time.sleep(0.5)
    # the grandchild went with its process group (gone, or a zombie waiting to be reaped)
    assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


def test_without_a_gpu_the_full_check_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TINY", raising=False)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_check.main([])
