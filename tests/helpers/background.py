"""Commands started early and read late: a module fixture starts a test's slow processes (a command line under test,
a two-rank run) when the module begins, the module's in-process tests run meanwhile on the other core, and the
tests that need a process's result wait for it. Processes are started only when a test that reads them was
selected (``-k``, ``-m 'not slow'``), and none outlives its module."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def selected(request: pytest.FixtureRequest, *names: str) -> bool:
    """Whether a test of this fixture's module named one of ``names`` (parametrized or not) will run."""
    return any(item.module is request.module and getattr(item, "originalname", item.name) in names
               for item in request.session.items)


class Background:
    """Commands started at once (``start``), each read back as a ``CompletedProcess`` when a test asks for it."""

    def __init__(self, timeout: float = 600):
        self._tmp = tempfile.TemporaryDirectory()
        self._deadline = time.monotonic() + timeout
        self._procs: dict[str, tuple[subprocess.Popen, object, object]] = {}
        self._done: dict[str, subprocess.CompletedProcess] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        out = Path(self._tmp.name, f"{name}.out").open("w+")
        err = Path(self._tmp.name, f"{name}.err").open("w+")
        # a session of its own: closing stops the ranks a run launched too
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        self._procs[name] = (proc, out, err)

    def process(self, name: str) -> subprocess.Popen:
        """The running process ``name`` (the leader of its own process group), e.g. to signal it."""
        return self._procs[name][0]

    def result(self, name: str) -> subprocess.CompletedProcess:
        """The finished process ``name`` (waited for, up to the deadline given at construction)."""
        if name not in self._done:
            proc, out, err = self._procs[name]
            rc = proc.wait(timeout=max(self._deadline - time.monotonic(), 1))
            out.seek(0)
            err.seek(0)
            self._done[name] = subprocess.CompletedProcess(proc.args, rc, out.read(), err.read())
        return self._done[name]

    def close(self) -> None:
        for proc, out, err in self._procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.close()
            err.close()
        self._tmp.cleanup()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
