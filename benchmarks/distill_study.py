"""Teacher against few-step students on real handwritten digits (docs/studies/distillation.md).

    python -m benchmarks.distill_study --root /tmp/distill_study --teacher-steps 1200 --distill-steps 150 \
        --json docs/studies/data/distillation.json

One process at a time, one thread each (``OMP_NUM_THREADS=1``, ``threads=1``); every figure of time is CPU time
(``resource.getrusage`` of the child processes for training, ``time.process_time`` for sampling), start-up
included. Steps: the digits of ``benchmarks.image_quality`` as PNG class folders; a teacher trained with the
quickstart preset at 16x16 (flow matching, tiny UNet) for ``--teacher-steps``; a consistency student and a
progressive student (grid 16 -> 4 steps) distilled from it for ``--distill-steps`` each through
``python -m src.train stage=distill``; then 300 samples of each configuration scored by the image-quality
scorer (classifier max-prob, class entropy, Frechet distance on PCA features against the held-out digits).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.image_quality import RES, Scorer, one_thread_env, to_flat, uptime, write_pngs
from src.fileio import atomic_write_text

N_SAMPLES = 300


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(args: list[str]) -> dict:
    """One ``python -m src.train`` process; its CPU time (user + system, start-up included) and wall time."""
    cpu0, t0 = child_cpu(), time.time()
    print(" ".join(["python -m src.train", *args]), flush=True)
    subprocess.run([sys.executable, "-m", "src.train", *args], env=one_thread_env(), check=True,
                   stdout=subprocess.DEVNULL)
    info = {"command": " ".join(["python -m src.train", *args]), "cpu_s": round(child_cpu() - cpu0, 1),
            "wall_s": round(time.time() - t0, 1), "uptime_after": uptime()}
    print(json.dumps(info), flush=True)
    return info


def train_teacher(root: Path, steps: int) -> dict:
    return run_cli(["experiment=quickstart", "domain=image", f"datamodule.path={root / 'train'}",
                    f"datamodule.resolution={RES}", "datamodule.channels=1", "datamodule.random_flip=false",
                    "datamodule.num_workers=0", "logger=none", "threads=1", f"trainer.max_steps={steps}",
                    "sampling.every_n_steps=1000000", "checkpoint.every_n_steps=1000000",
                    f"paths.output_dir={root / 'teacher'}"])


def distill(root: Path, method: str, steps: int, lr: float) -> dict:
    extra = ["distill.steps=[4]"] if method == "progressive" else []
    return run_cli(["stage=distill", f"distill.teacher={root / 'teacher' / 'checkpoints' / 'last.ckpt'}",
                    f"distill.method={method}", *extra, "logger=none", "threads=1", f"trainer.max_steps={steps}",
                    f"optim.lr={lr}", "optim.warmup_steps=20", "sampling.every_n_steps=1000000",
                    "checkpoint.every_n_steps=1000000", f"paths.output_dir={root / method}"])


def evaluate(root: Path, scorer: Scorer, name: str, grid: list[tuple[str | None, int]], seed: int = 1) -> list[dict]:
    import torch

    from src.latent.stage import module_from_checkpoint

    torch.set_num_threads(1)
    module = module_from_checkpoint(root / name / "checkpoints" / "last.ckpt")[0]
    rows = []
    for sampler, steps in grid:
        t0 = time.process_time()
        x = module.sample(N_SAMPLES, sampler=sampler, steps=steps, seed=seed, batch_size=100)
        cpu = time.process_time() - t0
        row = {"model": name, "sampler": sampler or module.diffusion_cfg["sampler"], "steps": steps,
               "network_evaluations": steps, **scorer.score(to_flat(x)),
               "cpu_ms_per_sample": round(1000 * cpu / N_SAMPLES, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | sampler | steps (network evaluations) | Frechet (PCA) | max-prob | class entropy | "
             "CPU ms per sample |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['frechet_pca']:.3f} | {r['max_prob']:.3f} "
                     f"| {r['class_entropy']:.3f} | {r['cpu_ms_per_sample']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distill_study", description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True, help="work folder (data, runs)")
    p.add_argument("--teacher-steps", type=int, default=1200, help="training steps of the teacher")
    p.add_argument("--distill-steps", type=int, default=150, help="training steps of each student")
    p.add_argument("--lr", type=float, default=2e-4, help="students' learning rate")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--teacher-cpu-s", type=float, help="use the teacher already in --root (trained, or stopped early "
                   "with SIGTERM, which saves last.ckpt) and record this CPU time for it")
    p.add_argument("--skip-training", action="store_true", help="score the runs already in --root (their training "
                   "figures are read from --json)")
    args = p.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor()
              or platform.machine(), "uptime_before": uptime(), "runs": {}}
    with open("/proc/cpuinfo") as f:
        result["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    if args.skip_training:
        result["runs"] = json.loads(args.json.read_text())["runs"]
    if not (args.root / "train").is_dir():
        write_pngs(args.root)
    if args.teacher_cpu_s is not None:
        import torch

        step = int(torch.load(args.root / "teacher" / "checkpoints" / "last.ckpt", map_location="cpu",
                              weights_only=True)["global_step"])
        result["runs"]["teacher"] = {"cpu_s": args.teacher_cpu_s, "steps": step,
                                     "note": "trained earlier in --root; CPU time as given (--teacher-cpu-s)"}
    elif not args.skip_training:
        result["runs"]["teacher"] = train_teacher(args.root, args.teacher_steps)
    for method in ("consistency", "progressive") if not args.skip_training else ():
        result["runs"][method] = distill(args.root, method, args.distill_steps, args.lr)
        result["runs"][method]["share_of_teacher_cpu"] = round(
            result["runs"][method]["cpu_s"] / result["runs"]["teacher"]["cpu_s"], 3)
    if args.json:  # the training figures first, so that a failed scoring keeps them
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2))
    scorer = Scorer()
    rows = evaluate(args.root, scorer, "teacher", [("dpmpp_2m_sde", 32), ("dpmpp_2m", 32), ("dpmpp_2m", 4),
                                                   ("dpmpp_2m", 2), ("dpmpp_2m", 1)])
    rows += evaluate(args.root, scorer, "consistency", [(None, 1), (None, 2), (None, 4)])
    rows += evaluate(args.root, scorer, "progressive", [(None, 4)])
    result.update(rows=rows, uptime_after=uptime(), sampling_cpu_s=round(time.process_time(), 1))
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
