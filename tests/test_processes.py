"""Child processes die with faber and are stopped with their whole process group."""

from __future__ import annotations

import subprocess
import sys

import pytest

from faber_core.processes import child_environment, run_captured
from faber_core.testing.fixtures import process_alive, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")


def wait_until_dead(pid: int) -> bool:
    return wait_for(lambda: not process_alive(pid), f"process {pid} to end", timeout=10)


PARENT = """
import os, subprocess, sys, time
from faber_core.processes import child_environment, spawn
child = spawn(["sleep", "300"], env=child_environment({}), stdout=subprocess.DEVNULL)
print(child.pid, os.getpgid(child.pid), flush=True)
time.sleep(300)
"""


def test_a_child_dies_when_faber_is_killed_and_runs_in_its_own_group():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child, group = map(int, parent.stdout.readline().split())
        parent.kill()  # SIGKILL: faber gets no chance to clean up
        parent.wait()
        assert group == child  # Ctrl-C in a terminal reaches faber, not the child directly
        assert wait_until_dead(child)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_timeout_stops_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild"
    script = f"sleep 300 & echo $! > {pid_file}; wait"

    with pytest.raises(subprocess.TimeoutExpired):
        run_captured(["sh", "-c", script], env=child_environment({}), timeout=1)

    grandchild = int(pid_file.read_text())
    assert wait_until_dead(grandchild)


def test_connection_settings_of_the_caller_never_reach_a_child(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "inherited-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:inherited-secret@h/db")

    run = run_captured(["env"], env=child_environment({"PGHOST": "chosen"}))

    assert "inherited-secret" not in run.stdout and "PGHOST=chosen" in run.stdout
