"""A real SLURM job on a one-node cluster on this machine: 2 CPU tasks, preempted with SIGUSR1, requeued,
resumed.

The fixture installs and starts the cluster with ``scripts/local_slurm.sh`` (Debian packages munge and
slurm, as root), so the README's test command runs this test on a fresh CI machine with nothing set up
beforehand. It skips only where that cannot work: not root, or neither SLURM nor apt-get present, or a
SLURM that the script did not configure (it never touches a real cluster's configuration).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.dist import REPO, TINY, clean_env

SETUP = REPO / "scripts" / "local_slurm.sh"
# long enough that the signal, sent once step 4's checkpoint exists, lands well before the last step on a
# quiet machine too (14 steps once finished first, and the test waited for a requeue that never came); without
# validation a step takes about 0.1 s there (0.3 s at load average 5), and the signal lands 1-2 s after the
# checkpoint: 60 steps leave several times that
MAX_STEPS = 60


def _slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in out.stdout.split())


@pytest.fixture(scope="module")
def local_slurm():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to install and start a local SLURM cluster (scripts/local_slurm.sh)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "written by scripts/local_slurm.sh" not in conf.read_text():
        pytest.skip("this machine has its own SLURM configuration; test jobs are not submitted to it")
    was_up = _slurm_up()
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "ready" in proc.stdout, \
        f"local SLURM setup failed:\n{proc.stdout}\n{proc.stderr}"
    yield
    if not was_up:
        subprocess.run(["bash", str(SETUP), "--stop"], capture_output=True, timeout=60)


def _job(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def _wait(what: str, predicate, timeout: float, log: Path):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    text = log.read_text()[-6000:] if log.exists() else "(no log)"
    raise AssertionError(f"timed out waiting for {what}; job log:\n{text}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_preempted_job_requeues_and_resumes(local_slurm, tmp_path):
    runs = tmp_path / "runs"
    # no validation (nothing here checks it; with sampling.num=2 each one would draw samples for its metrics)
    overrides = [*TINY, "trainer=ddp", "trainer.accelerator=cpu", f"trainer.max_steps={MAX_STEPS}",
                 "trainer.limit_val_batches=0", "checkpoint.every_n_steps=4",
                 "checkpoint.signal_check_every_n_steps=2", "logger=wandb", "sampling.num=2", "sampling.steps=4",
                 f"paths.output_dir={runs}/${{run_id:}}"]
    submit = subprocess.run(
        ["sbatch", "--parsable", "--job-name=difftest", "--ntasks-per-node=2", "--gpus-per-node=0",
         "--cpus-per-task=1", "--time=15", f"--output={tmp_path}/%x-%j.out", "slurm/train.sbatch",
         *overrides],
        cwd=REPO, env=clean_env(DIFFUSION_PYTHON=sys.executable), capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    log, run = tmp_path / f"difftest-{job}.out", runs / f"slurm-{job}"
    try:
        # the run folder is keyed on the job id; preempt once training is under way (a checkpoint exists)
        _wait("the first checkpoint", lambda: (run / "checkpoints" / "step0000004.ckpt").exists()
              or _job(job).get("JobState") in ("FAILED", "CANCELLED", "COMPLETED"), 300, log)
        assert (run / "checkpoints" / "step0000004.ckpt").exists(), log.read_text()[-6000:]
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)

        def requeued():
            state = _job(job)
            back = int(state.get("Restarts", 0)) >= 1 and state.get("JobState") in ("PENDING", "RUNNING")
            return state if back else None

        _wait("the requeue", requeued, 240, log)
        # SLURM holds a requeued job until its old credential expired (AuthInfo=cred_expire, 10 s on the local
        # cluster); forcing an earlier start races the node's revocation of that credential and fails the job
        done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
        _wait("the job to finish", lambda: _job(job).get("JobState") in done, 300, log)
        text = log.read_text()
        assert _job(job)["JobState"] == "COMPLETED", text[-6000:]
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)

    # Lightning ran under srun with SLURM's ranks: once before and once after the requeue
    for restart in (0, 1):
        line = f"Distributed: SLURMEnvironment, world size 2, strategy DDPStrategy, job {job}, " \
               f"restart {restart}"
        assert line in text, text[-6000:]
    saved = re.search(r"Preemption signal received: saving .*last\.ckpt at step (\d+)", text)
    assert saved, text[-6000:]
    step = int(saved.group(1))
    assert 4 <= step < MAX_STEPS
    assert f"Requeued SLURM job {job}" in text
    assert re.search(rf"Resuming from {re.escape(str(run))}/checkpoints/last\.ckpt at step {step}\b", text), \
        text[-6000:]
    assert "Restoring states from the checkpoint path" in text

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == MAX_STEPS
    assert int(ckpt["state_dict"]["ema.num_updates"]) == MAX_STEPS  # no update lost or repeated
    assert sorted(p.name for p in runs.iterdir()) == [f"slurm-{job}"]  # one run folder across the requeue
    assert len(list((run / "samples").glob(f"step{MAX_STEPS:07d}_*.png"))) == 2  # sampling.num at the last step
    # W&B offline, from rank 0 only: one offline run per job start, sharing the run's id
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and len({p.name.rsplit("-", 1)[1] for p in offline}) == 1, offline
