"""Size each process's thread pool from the cores it was given, so ranks and workers do not oversubscribe.

PyTorch starts one OpenMP thread per core it can see in every process: the main process, each DDP rank
and (through numpy/BLAS) each DataLoader worker. On a node shared with other jobs, or with several ranks
per node, that is many more busy threads than cores, and every step waits on the slowest of them.

Precedence: an explicit ``OMP_NUM_THREADS`` in the environment, then the config key ``threads: N``, then
``threads: auto``: the cores this process may use (``SLURM_CPUS_PER_TASK``, else the CPU affinity mask and
the cgroup quota) divided by the ranks that share them on this node.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from src.errors import ConfigError

from .preemption import leave_stop_signals_to_parent

log = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def cgroup_cpus(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole CPUs of the cgroup v2 quota (``"200000 100000"`` -> 2); None when unlimited or unreadable."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_ranks(devices=None) -> int:
    """Processes of this job that share this node's cores (one per device under DDP/FSDP)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        if (n := _env_int(name)) is not None:
            return n
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) and devices:
        return len(devices)
    return 1


def available_cores(devices=None) -> tuple[int, str]:
    """(cores for this process, where the figure came from)."""
    per_task = _env_int("SLURM_CPUS_PER_TASK")
    if per_task is not None:  # SLURM already gives each task (rank) its own CPUs
        return min(per_task, affinity_cpus()), "SLURM_CPUS_PER_TASK"
    cores, source = affinity_cpus(), "CPU affinity"
    quota = cgroup_cpus()
    if quota is not None and quota < cores:
        cores, source = quota, "cgroup cpu.max"
    ranks = local_ranks(devices)
    if ranks > 1:
        return max(1, cores // ranks), f"{source} / {ranks} ranks on this node"
    return cores, source


def resolve_threads(setting="auto", devices=None) -> tuple[int, str]:
    """(threads for this process, why); ``setting`` is the config's ``threads`` (``auto`` or a number)."""
    env = _env_int("OMP_NUM_THREADS")
    if env is not None:
        return env, "OMP_NUM_THREADS"
    if setting in (None, "auto"):
        return available_cores(devices)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"threads must be auto or a whole number of at least 1, got {setting!r}.")
    return setting, "threads"


def set_threads(n: int) -> None:
    """Limit torch's intra-op pool and the OpenMP/BLAS pools of numpy and friends in this process."""
    torch.set_num_threads(n)
    try:  # optional dependency: threadpoolctl
        from threadpoolctl import threadpool_limits
    except ImportError:  # only the torch pool then
        return
    threadpool_limits(n)


def apply(setting="auto", devices=None) -> int:
    """Size this process's pools; returns the number of threads and logs where it came from."""
    n, why = resolve_threads(setting, devices)
    set_threads(n)
    log.info("Threads: %d per process (%s); override with threads=N or OMP_NUM_THREADS.", n, why)
    return n


class WorkerThreads:
    """A DataLoader ``worker_init_fn`` that gives each worker one thread and then runs ``inner``; SIGTERM
    and Ctrl-C sent to the process group are left to the training process (src/preemption.py).

    Workers decode and augment one item at a time; their parallelism is the number of workers. Without
    an ``inner`` function and with ``seed_everything(workers=True)``, it seeds the worker as Lightning would
    (Lightning adds its own function only to loaders that have none).
    """

    def __init__(self, inner=None, threads: int = 1):
        self.inner, self.threads = inner, threads

    def __call__(self, worker_id: int) -> None:
        set_threads(self.threads)
        leave_stop_signals_to_parent()  # the training process saves and stops, then ends its workers
        if self.inner is not None:
            self.inner(worker_id)
        elif int(os.environ.get("PL_SEED_WORKERS", 0)):
            pl_worker_init_function(worker_id)


def limit_worker_threads(datamodule) -> None:
    """Give every DataLoader the datamodule returns a :class:`WorkerThreads` ``worker_init_fn``."""
    for name in ("train_dataloader", "val_dataloader"):
        build = getattr(datamodule, name, None)
        if build is None:
            continue

        def wrapped(*args, _build=build, **kwargs):
            loader = _build(*args, **kwargs)
            if isinstance(loader, DataLoader) and loader.num_workers > 0 \
                    and not isinstance(loader.worker_init_fn, WorkerThreads):
                loader.worker_init_fn = WorkerThreads(loader.worker_init_fn)
            return loader

        setattr(datamodule, name, wrapped)
