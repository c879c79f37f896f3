"""MRI reconstruction with a few-step student against its teacher, on the real head scan of the reconstruction study.

    python -m benchmarks.distill_recon_study --out /tmp/distill_recon [--train-minutes 10] [--distill-minutes 2]

1. the teacher: a prior trained with ``experiment=recon_prior`` on the real head scan's training slices for
   ``--train-minutes`` of one core's CPU time (benchmarks/recon_study_real.py; an existing OUT/train is reused);
2. the student: ``python -m src.train stage=distill distill.teacher=... distill.method=METHOD`` on the same slices for
   ``--distill-minutes`` of CPU time (an existing OUT/student_METHOD_Mmin is reused);
3. ``src.reconstruct`` of the held-out test slab (4 slices, 128x96, equispaced masks at 4x and 8x, the same seed)
   with the teacher at the defaults its checkpoint carries, and with the student at each step count it was made for,
   with the same number of posterior samples and TV refinement as the teacher's defaults (time travel off: the
   student's grid is too coarse for it), and with the teacher itself at ``--teacher-steps`` steps (the baseline
   distillation has to beat). One thread; the time per slice is that of ``src.reconstruct`` (wall time of
   a single-threaded process on a core of its own; pin it with ``taskset``).

Prints a Markdown table (PSNR, SSIM, seconds per slice) and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recon_study_real import SETTINGS, real_data, run_with_cpu_budget, train  # noqa: E402
from src.reconstruct import main as reconstruct_cli  # noqa: E402


def distill(out: Path, teacher: Path, data: Path, method: str, minutes: float, steps: list[int]) -> tuple[Path, dict]:
    run = out / f"student_{method}_{minutes:g}min"
    ckpt = run / "checkpoints" / "last.ckpt"
    record = run / "distill_info.json"
    if ckpt.exists():
        print(f"reusing {ckpt}")
        return ckpt, {**(json.loads(record.read_text()) if record.exists() else {}), "reused": True}
    steps_arg = f"[{','.join(map(str, steps))}]"
    cmd = [sys.executable, "-m", "src.train", "stage=distill", f"distill.teacher={teacher}",
           f"distill.method={method}", f"distill.steps={steps_arg}", f"distill.datamodule.path={data}",
           "logger=none", "trainer.max_steps=100000", "trainer.enable_progress_bar=false",
           "checkpoint.every_n_steps=50", "sampling.every_n_steps=100000", "trainer.val_check_interval=100000",
           "optim.warmup_steps=20", f"paths.output_dir={run}"]
    print(" ".join(cmd[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    info = run_with_cpu_budget(cmd, minutes * 60, env)
    import torch

    info["distill_steps"] = int(torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"])
    info["method"], info["steps"] = method, steps
    record.write_text(json.dumps(info, indent=2) + "\n")
    print(f"distilled {info['distill_steps']} steps: {info}", flush=True)
    return ckpt, info


def reconstruct(ckpt: Path, test: Path, out: Path, acc: int, center: float, seed: int, *extra: str) -> dict:
    t0 = time.process_time()
    summary = reconstruct_cli([
        "--checkpoint", str(ckpt), "--input", str(test), "--simulate", "--mask", "equispaced",
        "--acceleration", str(acc), "--center-fraction", str(center), "--seed", str(seed), "--output", str(out),
        "--device", "cpu", "--quiet", *extra])
    summary["cpu_seconds"] = round(time.process_time() - t0, 2)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/distill_recon"), help="runs, reconstructions, results")
    p.add_argument("--train-minutes", type=float, default=10.0, help="CPU-minutes of the teacher (one thread)")
    p.add_argument("--distill-minutes", type=float, default=2.0, help="CPU-minutes of each student (one thread)")
    p.add_argument("--methods", default="consistency", help="comma-separated: consistency, progressive")
    p.add_argument("--teacher-steps", type=int, nargs="*", default=[4],
                   help="also reconstruct with the teacher itself at these step counts (no time travel)")
    p.add_argument("--seed", type=int, default=0, help="mask and sampler seed")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_dir, _, test_path = real_data(out)
    teacher, teacher_info = train(out, train_dir, args.train_minutes)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": os.getloadavg(),
                     "teacher": teacher_info, "students": {}, "test": {}}
    rows = []
    for acc, center in SETTINGS:
        s = reconstruct(teacher, test_path, out / f"teacher_{acc}x.nii.gz", acc, center, args.seed, "--compare-cs")
        results["test"][f"teacher {acc}x"] = s
        rows.append((f"{acc}x", "teacher, its defaults", s))
    ref = results["test"]["teacher 4x"]
    same = ["--num-samples", str(ref["num_samples"]), "--refine-tv", str(ref["refine_tv"])]
    for k in args.teacher_steps:  # the teacher itself in few steps (no time travel): what distillation must beat
        for acc, center in SETTINGS:
            s = reconstruct(teacher, test_path, out / f"teacher{k}_{acc}x.nii.gz", acc, center, args.seed,
                            "--steps", str(k), "--resample", "0", *same)
            results["test"][f"teacher {k} steps {acc}x"] = s
            rows.append((f"{acc}x", f"teacher, {k} steps, no time travel", s))
    for method in args.methods.split(","):
        steps = [1, 2, 4] if method == "consistency" else [4]
        ckpt, info = distill(out, teacher, train_dir, method, args.distill_minutes, steps)
        results["students"][method] = info
        for acc, center in SETTINGS:
            for k in steps:
                s = reconstruct(ckpt, test_path, out / f"{method}{k}_{acc}x.nii.gz", acc, center, args.seed,
                                "--steps", str(k), *same)
                results["test"][f"{method} {k} steps {acc}x"] = s
                rows.append((f"{acc}x", f"{method} student, {k} steps", s))
    results["load_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n| acceleration | model | PSNR (dB) | SSIM | s per slice | samples x steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for acc, name, s in rows:
        m = s["metrics"]["reconstruction"]
        print(f"| {acc} | {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {s['seconds_per_slice']:.2f} | "
              f"{s['num_samples']} x {s['steps']} |")
    for acc, _ in SETTINGS:
        m = results["test"][f"teacher {acc}x"]["metrics"]
        print(f"{acc}x: zero-filled {m['zero_filled']['psnr']:.2f} dB, TV {m['compressed_sensing']['psnr']:.2f} dB")


if __name__ == "__main__":
    main()
