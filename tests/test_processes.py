"""Child processes die with faber and are stopped with their whole process group."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from faber_core.processes import child_environment, how_it_ended, run_captured, signal_of, spawn, stop
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


# A leader that exits on SIGTERM at once, and a worker of its group that takes a second to finish
# on SIGTERM (pg_dump --jobs workers cancel their queries first) or ignores it; the worker's pid
# is printed once both are set up.
_LEADER_AND_WORKER = """
import signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(worker.pid, flush=True)
time.sleep(300)
"""
_SLOW_WORKER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *args: (time.sleep(1), sys.exit(0)))
print("ready", flush=True)
time.sleep(300)
"""
_STUBBORN_WORKER = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(300)
"""


def _leader_with_worker(worker_code: str) -> tuple[subprocess.Popen, int]:
    leader = spawn(
        [sys.executable, "-c", _LEADER_AND_WORKER, worker_code],
        env=child_environment({}),
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = int(leader.stdout.readline())
    assert leader.stdout.readline().strip() == "ready"  # the worker's handler is in place
    return leader, worker


def test_stopping_a_child_waits_for_the_workers_of_its_group():
    """The leader exits at once; its worker, signalled with it, takes a second: stop() returns
    only once the worker has ended too, so nothing of a stopped pg_dump outlives faber."""
    leader, worker = _leader_with_worker(_SLOW_WORKER)
    stop(leader)
    assert not process_alive(worker)


def test_stopping_a_child_kills_a_worker_of_its_group_that_ignores_sigterm():
    leader, worker = _leader_with_worker(_STUBBORN_WORKER)
    stop(leader, grace=1)
    assert wait_until_dead(worker)


def test_connection_settings_of_the_caller_never_reach_a_child(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "inherited-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:inherited-secret@h/db")

    run = run_captured(["env"], env=child_environment({"PGHOST": "chosen"}))

    assert "inherited-secret" not in run.stdout and "PGHOST=chosen" in run.stdout


def test_sigterm_arriving_while_a_child_is_forked_is_not_lost_and_stops_the_child(monkeypatch):
    """Delivered during the fork, the handler would run in an at-fork callback, where Python ignores
    the exception: the interrupt would be lost and faber would go on. It is held until the child
    exists, then raised, and the child is stopped."""
    import os
    import signal

    from faber_core import processes
    from faber_core.interrupts import Terminated, sigterm_as_interrupt

    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_while_sigterm_arrives(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real SIGTERM, at the moment of the fork
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(processes.subprocess, "Popen", popen_while_sigterm_arrives)
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        processes.spawn(["sleep", "300"], env=child_environment({}), stdout=subprocess.DEVNULL)

    [child] = started
    assert child.poll() is not None, "the child must be stopped"
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set()), "SIGTERM stays blocked"


def test_a_fork_while_a_protocol_line_is_handled_does_not_raise_the_interrupt_before_the_line_is_handled():
    """Deferred blocks nest (a runner's event handled, and a child forked while handling it): the
    interrupt is raised as the outermost ends, not in the middle of the line's handling."""
    import os

    from faber_core import processes
    from faber_core.interrupts import Terminated, deferred, sigterm_as_interrupt

    handled = []
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        with deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            processes.run_captured(["true"], env=child_environment({}))
            handled.append("the rest of the line")
    assert handled == ["the rest of the line"]


def test_a_child_does_not_inherit_the_signals_held_during_its_fork():
    proc = run_captured(["grep", "^SigBlk", "/proc/self/status"], env=child_environment({}))
    blocked = int(proc.stdout.split()[1], 16)
    assert not blocked & (1 << (15 - 1)) and not blocked & (1 << (2 - 1)), proc.stdout


def test_how_a_program_ended_names_the_signal_that_killed_it():
    assert how_it_ended(3) == "exit code 3"
    assert how_it_ended(-signal.SIGKILL) == "killed by SIGKILL (Killed)"
    assert (signal_of(-signal.SIGKILL), signal_of(3)) == ("SIGKILL", None)
    assert how_it_ended(-signal.SIGXFSZ) == "killed by SIGXFSZ (File size limit exceeded)"
    assert how_it_ended(-200) == "killed by signal 200"
