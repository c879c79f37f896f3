"""A run as its user meets it: thread pools sized to the cores given, SIGTERM/Ctrl-C save and say how to
resume, train.log tells length, ETA, losses and a summary, a failed run leaves no folder, rank > 0 writes
no Hydra files, and only the project's own errors become one-line messages."""

import os
import signal
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from src import threads
from src.errors import ConfigError
from src.preemption import LastCheckpoint
from src.runfolder import is_fresh, remove_failed_run
from tests.conftest import ROOT
from tests.helpers.background import Background, selected

REAL_CGROUP_CPUS = threads.cgroup_cpus
THREAD_ENV = ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda path=threads.CGROUP_CPU_MAX: None)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 16)
    return monkeypatch


def test_threads_come_from_the_cores_given(clean_env):
    assert threads.resolve_threads("auto") == (16, "CPU affinity")
    assert threads.resolve_threads("auto", devices=4)[0] == 4  # four local ranks share the 16 cores
    clean_env.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads.resolve_threads("auto", devices=1)[0] == 2
    clean_env.setenv("SLURM_CPUS_PER_TASK", "3")  # SLURM gives each task its own CPUs: no division
    assert threads.resolve_threads("auto", devices=8) == (3, "SLURM_CPUS_PER_TASK")
    assert threads.resolve_threads(5) == (5, "threads")
    clean_env.setenv("OMP_NUM_THREADS", "1")  # an explicit environment wins over the config
    assert threads.resolve_threads(5) == (1, "OMP_NUM_THREADS")


def test_cgroup_quota_is_read_in_whole_cpus(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("250000 100000\n")
    assert REAL_CGROUP_CPUS(quota) == 3
    quota.write_text("max 100000\n")
    assert REAL_CGROUP_CPUS(quota) is None
    assert REAL_CGROUP_CPUS(tmp_path / "absent") is None


def test_cgroup_quota_below_affinity_wins(clean_env, tmp_path):
    clean_env.setattr(threads, "cgroup_cpus", lambda path=None: 2)
    assert threads.resolve_threads("auto") == (2, "cgroup cpu.max")


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5, True])
def test_bad_threads_setting_is_a_config_error(clean_env, bad):
    with pytest.raises(ConfigError, match="threads"):
        threads.resolve_threads(bad)


class _ThreadsSeen(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([torch.get_num_threads(), int(os.environ.get("_INNER_RAN", "0"))])


def _inner(worker_id):
    os.environ["_INNER_RAN"] = "1"


class _DM:
    def train_dataloader(self):
        return DataLoader(_ThreadsSeen(), batch_size=1, num_workers=1, worker_init_fn=_inner)

    def val_dataloader(self):
        return DataLoader(_ThreadsSeen(), batch_size=1, num_workers=0)


def test_dataloader_workers_get_one_thread_and_keep_their_init_fn():
    dm = _DM()
    threads.limit_worker_threads(dm)
    loader = dm.train_dataloader()
    assert isinstance(loader.worker_init_fn, threads.WorkerThreads)
    seen = torch.cat(list(loader))
    assert seen[:, 0].tolist() == [1, 1] and seen[:, 1].tolist() == [1, 1]
    assert dm.val_dataloader().worker_init_fn is None  # no workers: nothing to size


def test_ctrl_c_requests_a_save_and_a_second_one_stops_at_once(tmp_path):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    cb = LastCheckpoint(tmp_path / "last.ckpt")
    try:
        cb.install()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary
        assert cb.requested and cb.stop_signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        cb.uninstall()
        assert signal.getsignal(signal.SIGTERM) == previous[signal.SIGTERM]
        for s, h in previous.items():
            signal.signal(s, h)


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "src.train", "experiment=smoke", "logger=none", f"paths.output_dir={out}",
            "trainer.enable_progress_bar=false", *extra]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_train_log_has_losses_and_a_final_summary(compose_cfg, tmp_path, caplog):
    from src.train import train

    cfg = compose_cfg(["experiment=smoke", "logger=none", f"paths.output_dir={tmp_path}", "trainer.max_steps=8",
                       "trainer.log_every_n_steps=2", "sampling.num=0", "trainer.val_check_interval=8",
                       "trainer.enable_progress_bar=false"])
    with caplog.at_level("INFO", logger="src.train"):
        result = train(cfg)
    text = caplog.text
    assert "Training 8 steps (trainer.max_steps=8)" in text
    losses = [line for line in text.splitlines() if "  loss " in line]
    assert [line.split("step ")[1].split("/")[0] for line in losses] == ["2", "4", "6", "8"]
    assert "ETA: 2 steps left" in text  # timing starts after step 1; the ETA follows 5 steps later
    assert "Finished at step 8 (8 steps in" in text and f"checkpoints in {tmp_path / 'checkpoints'}" in text
    assert result["summary"].startswith("Finished at step 8") and result["stop_signal"] is None


@pytest.fixture(scope="module", autouse=True)
def commands(request, tmp_path_factory):
    """The train command as real processes, started when the module begins so the in-process tests run meanwhile:
    twice on a data folder that does not exist, as rank 0 and as a rank > 0 (``LOCAL_RANK=1``, as Lightning starts
    the other ranks), and once for a run that the SIGTERM test stops. The processes and their run folders."""
    wanted = {"rank0": "test_failed_data_check_leaves_no_run_folder",
              "rank1": "test_a_nonzero_rank_leaves_no_hydra_files_or_train_log",
              "sigterm": "test_sigterm_saves_last_ckpt_and_says_how_to_resume"}
    base = tmp_path_factory.mktemp("started")
    folders = {"rank0": base / "outputs" / "image" / "run", "rank1": base / "rank1" / "run",
               "sigterm": base / "sigterm" / "run"}
    commands = {
        "rank0": (_train_cmd(folders["rank0"], f"datamodule.path={base / 'no_such_folder'}", "logger=wandb"), ENV),
        "rank1": (_train_cmd(folders["rank1"], f"datamodule.path={base / 'missing'}"), {**ENV, "LOCAL_RANK": "1"}),
        # endless until the test sends SIGTERM; DataLoader workers too, to see they take the signal quietly
        "sigterm": (_train_cmd(folders["sigterm"], "trainer.max_steps=100000", "datamodule.num_workers=2",
                               "sampling.every_n_steps=0", "trainer.val_check_interval=100000"), ENV),
    }
    with Background(timeout=420) as started:
        for name, (cmd, env) in commands.items():
            if selected(request, wanted[name]):
                started.start(name, cmd, env, ROOT)
        yield started, folders


@pytest.mark.slow
def test_failed_data_check_leaves_no_run_folder(commands):
    started, folders = commands
    res, out = started.result("rank0"), folders["rank0"]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "no_such_folder" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and (out.parent).exists()


def test_removal_keeps_what_the_run_did_not_write(tmp_path):
    out = tmp_path / "mine"
    (out / ".hydra").mkdir(parents=True)
    (out / "train.log").write_text("x")
    assert is_fresh(out)
    (out / "notes.txt").write_text("a user's own file")
    assert not is_fresh(out)  # a folder with other files is not this run's alone
    (out / "checkpoints").mkdir()
    (out / "config.yaml").write_text("x")
    assert remove_failed_run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert not remove_failed_run(out) and (out / "checkpoints" / "last.ckpt").exists()


def test_main_turns_project_errors_into_one_line_and_lets_bugs_through(compose_cfg, tmp_path, monkeypatch,
                                                                        capsys):
    import src.train as train_mod

    cfg = compose_cfg([f"paths.output_dir={tmp_path / 'run'}"])
    main = train_mod.main.__wrapped__  # the function under @hydra.main

    def config_error(cfg):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        raise ConfigError("logger.mode must be offline, online or disabled.")

    monkeypatch.setattr(train_mod, "train", config_error)
    with pytest.raises(SystemExit) as stop:
        main(cfg)
    assert stop.value.code == 2
    assert "error: logger.mode must be" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    def bug(cfg):
        raise ValueError("a bug")

    monkeypatch.setattr(train_mod, "train", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(cfg)


def test_unknown_logger_is_a_project_error(tmp_path):
    from src.errors import ProjectError
    from src.train import build_logger

    with pytest.raises(ProjectError, match="logger.name"):
        build_logger({"name": "tensorboard"}, tmp_path)
    with pytest.raises(ProjectError, match="logger.mode"):
        build_logger({"name": "wandb", "mode": "sometimes"}, tmp_path)


@pytest.mark.parametrize("env,rank", [({"SLURM_PROCID": "1"}, 1), ({"LOCAL_RANK": "2"}, 2),
                                      ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, 0), ({}, 0)])
def test_only_rank_zero_writes_hydra_files(compose_cfg, monkeypatch, env, rank):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.train import launch_rank, rank_overrides

    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launch_rank() == rank
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=rank_overrides(launch_rank()), return_hydra_config=True)
    file_handlers = [h for h in cfg.hydra.job_logging.get("handlers", {}).values()
                     if "FileHandler" in str(h.get("class", ""))]
    if rank:
        assert cfg.hydra.output_subdir is None and not file_handlers
    else:
        assert cfg.hydra.output_subdir == ".hydra" and file_handlers


@pytest.mark.slow
def test_a_nonzero_rank_leaves_no_hydra_files_or_train_log(commands):
    started, folders = commands
    res, out = started.result("rank1"), folders["rank1"]
    assert res.returncode == 2, res.stderr[-2000:]
    assert "missing" in res.stderr and "Traceback" not in res.stderr
    assert not (out / ".hydra").exists() and not (out / "train.log").exists()


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_says_how_to_resume(commands):
    started, folders = commands
    proc, out = started.process("sigterm"), folders["sigterm"]
    # the signal goes to the whole process group (as from a terminal or a scheduler), DataLoader workers too
    deadline = time.time() + 300
    while "step 5/100000" not in ((out / "train.log").read_text() if (out / "train.log").exists() else ""):
        assert proc.poll() is None and time.time() < deadline, "training did not reach step 5"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    res = started.result("sigterm")
    text = res.stdout + res.stderr
    assert res.returncode == 128 + signal.SIGTERM, text[-2000:]
    assert "Traceback" not in text and "killed by signal" not in text
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 5
    assert f"ckpt_path={last}" in text and f"at step {step}" in text
    log = (out / "train.log").read_text()
    assert "Training 100000 steps" in log and "ETA" in log
    assert f"Stopped by SIGTERM at step {step}" in log and "final training loss" in log
