"""Running external programs (pg_dump, psql, Node, Prisma): they die with faber and never leak credentials.

Every child process faber starts goes through :func:`spawn`:

- **It dies with faber.** On Linux the child asks the kernel for ``SIGKILL`` when faber dies
  (``PR_SET_PDEATHSIG``), so a ``kill -9`` of faber during a backup leaves no ``pg_dump``
  writing on, and a killed ``psql`` ends its server session, which rolls its transaction back.
  A program with workers of its own (``pg_dump --jobs``) asks for ``SIGTERM`` instead
  (``death_signal``): the signal reaches it alone, and on ``SIGTERM`` it stops its workers, which
  would otherwise finish the table they are on. The signal is tied to the thread that started
  the child: spawn from a thread that outlives it.
- **It runs in its own session and process group.** Ctrl-C in a terminal reaches faber alone, which then
  stops the child deliberately (:func:`stop` signals the whole group, grandchildren included,
  and waits for all of them),
  instead of every process reacting at once. Programs that need the terminal (an interactive
  ``prisma migrate dev``) stay in faber's group: ``spawn(..., own_group=False)``.
- **An interrupt is not lost while it starts.** SIGINT and SIGTERM are held during the fork
  (Python ignores an exception raised in its at-fork callbacks) and raised once the child
  exists, which is then stopped.
- **Credentials travel only in the environment**, never in argv (argv is visible to every
  user through the process list); libpq settings no variable carries (``sslpassword``) in a
  service file held in memory that the environment names (:mod:`faber_core.postgres.service`).
  Whatever the child prints is redacted before anyone sees it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faber_core.interrupts import deferred
from faber_core.secrets import Redactor

# Inherited variables that would point a child at some other database.
_CONNECTION_VARIABLES = ("DATABASE_URL",)
_CONNECTION_PREFIXES = ("PG", "MYSQL_")
"""libpq's and the MySQL clients' connection variables (PGHOST, MYSQL_PWD, ...)."""
STOP_GRACE_SECONDS = 5.0
"""How long a child may take to exit after SIGTERM before it is killed."""

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once, before any fork: the child must only call it, not look it up.
_prctl = _load_prctl()


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_CAN_HOLD_SIGNALS = hasattr(signal, "pthread_sigmask")


def _in_child(parent: int, signal_mask: set[int] | None, death_signal: int) -> Any:
    """What the child runs between fork and exec: faber's signal mask back, then die with faber."""
    if _prctl is None and signal_mask is None:
        return None

    def in_child() -> None:
        if signal_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent:  # faber died between fork and prctl
                os._exit(1)

    return in_child


def find_program(name: str) -> Path | None:
    """The executable ``name``: on ``PATH``, else beside the Python running faber.

    Programs installed with faber (squawk from ``squawk-cli``, a ``node`` from ``nodeenv``) land
    in the environment's scripts directory, which is on ``PATH`` only while the environment is
    activated; a CI job that runs ``/opt/venv/bin/faber`` directly must find them all the same.
    """
    found = shutil.which(name)
    if found is None:
        beside_python = os.pathsep.join(
            dict.fromkeys([sysconfig.get_path("scripts"), str(Path(sys.executable).parent)])
        )
        found = shutil.which(name, path=beside_python)
    return Path(found) if found else None


def child_environment(extra: Mapping[str, str], *, withheld: Collection[str] = ()) -> dict[str, str]:
    """The current environment without inherited connection settings and the ``withheld``
    variables (those the config names as holding database URLs), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_CONNECTION_PREFIXES) and k not in _CONNECTION_VARIABLES and k not in withheld
    }
    env.update(extra)
    return env


def spawn(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    own_group: bool = True,
    death_signal: int = signal.SIGKILL,
    **popen: Any,
) -> subprocess.Popen:
    """Start ``argv`` so it dies with faber; ``env`` is the child's whole environment.

    ``popen`` takes the other :class:`subprocess.Popen` arguments (stdin, stdout, cwd, text, ...).
    ``death_signal``: what the child gets when faber dies (``SIGTERM`` for a program that stops
    its own workers on it, see the module docstring).

    SIGINT, SIGTERM and SIGHUP are held while Python forks: delivered then, faber's handler would
    run in the fork's at-fork callbacks, where the exception that stops faber is ignored and the
    interrupt lost. A signal held is raised as soon as the child exists, and stops it.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS) if _CAN_HOLD_SIGNALS else None
    proc = None
    try:
        with deferred():  # an interrupt that came during the fork is raised as it ends
            try:
                proc = subprocess.Popen(
                    [str(arg) for arg in argv],
                    env=dict(env),
                    preexec_fn=_in_child(os.getpid(), held, death_signal),
                    start_new_session=own_group,
                    **popen,
                )
            finally:
                _release(held)
    except BaseException:
        if proc is not None:
            stop(proc)
        raise
    return proc


def _release(held: set[int] | None) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """End ``proc`` and its process group: SIGTERM, then SIGKILL for what still runs after ``grace`` seconds.

    The whole group is waited for, not only ``proc``: ``pg_dump --jobs`` workers, signalled with
    their leader, still cancel their queries after it has exited, and would outlive faber."""
    if proc.poll() is not None:
        return
    deadline = time.monotonic() + grace
    group = _group_led_by(proc)
    _signal(proc, group, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal(proc, group, signal.SIGKILL)
        proc.wait()
    if group is not None:
        _wait_for_group(group, deadline)


def _group_led_by(proc: subprocess.Popen) -> int | None:
    """``proc``'s process group when ``proc`` leads it (spawned with ``own_group``), else None."""
    try:
        return proc.pid if os.getpgid(proc.pid) == proc.pid else None
    except (ProcessLookupError, PermissionError):
        return None


def _signal(proc: subprocess.Popen, group: int | None, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group is not None:
            os.killpg(group, signum)
            return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


_GROUP_POLL_SECONDS = 0.02


def _wait_for_group(group: int, deadline: float) -> None:
    """Wait until no process of ``group`` runs; SIGKILL those still running at ``deadline``."""
    while _group_running(group):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            return  # SIGKILL cannot be caught: they end as the kernel delivers it
        time.sleep(_GROUP_POLL_SECONDS)


def _group_running(group: int) -> bool:
    """Whether a process of ``group`` still runs. On Linux, from ``/proc``: the members' zombies,
    which only their new parent reaps (in a container, an init that may never), do not count."""
    if not sys.platform.startswith("linux"):
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while listed
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state not in (b"Z", b"X"):
            return True
    return False


@contextlib.contextmanager
def supervised(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Yield ``proc``; if the block raises (an error, Ctrl-C, SIGTERM), stop it before going on."""
    try:
        yield proc
    except BaseException:
        stop(proc)
        raise


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)


def how_it_ended(returncode: int) -> str:
    """A program's end for a message: ``exit code 3``, or the signal that killed it, named
    (``killed by SIGKILL (Killed)``: the kernel's out-of-memory killer or a ``kill -9``;
    ``killed by SIGXFSZ (File size limit exceeded)``), where a bare ``-9`` would say neither."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"killed by signal {-returncode}"
    return f"killed by {name} ({signal.strsignal(-returncode)})"


def signal_of(returncode: int) -> str | None:
    """The name of the signal that killed a program (``SIGKILL``); None when it exited."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_captured(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float | None = None,
) -> ToolRun:
    """Run a program to completion with ``env`` as its whole environment; return its text output.

    The output is decoded as it is, without Python's translation of ``\r`` and ``\r\n`` into
    ``\n``: a file name git lists may hold a carriage return. On a timeout the program is stopped
    and :class:`subprocess.TimeoutExpired` raised.
    """
    proc = spawn(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with supervised(proc):
        stdout, stderr = proc.communicate(None if input is None else input.encode(), timeout=timeout)
    return ToolRun(proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def run_tool(
    argv: Sequence[str | Path],
    *,
    redactor: Redactor,
    env: Mapping[str, str],
    withheld: Collection[str] = (),
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float | None = None,
) -> ToolRun:
    """Run a program to completion (the current environment without connection settings and the
    ``withheld`` variables, plus ``env``) and return its redacted output."""
    run = run_captured(argv, env=child_environment(env, withheld=withheld), cwd=cwd, input=input, timeout=timeout)
    return ToolRun(run.returncode, redactor.redact(run.stdout), redactor.redact(run.stderr))
