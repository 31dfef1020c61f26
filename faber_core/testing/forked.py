"""Runs of ``python -m faber_core`` forked from an interpreter that has already imported faber.

Most of a short faber command's CPU goes on starting: the interpreter, then typer, pydantic,
psycopg, pluggy and faber's own modules, ~0.5 s of CPU on a loaded 2-core machine before the first
query. A suite that runs faber a thousand times spends most of its time there. Here each run is a
fork of a server process (:mod:`multiprocessing`'s ``forkserver``) that imported those modules
once. The run is still a process of its own, with its own exit code, standard streams, signal
handlers, environment, working directory and ``sys.path``, and it runs faber's ``__main__`` as
``python -m faber_core`` does.

An environment that changes how the interpreter itself starts (``PYTHON*``, such as a
``PYTHONPATH`` with a ``sitecustomize``; the locale) cannot be given to a fork:
:func:`can_fork_with` says so, and such a run needs a new interpreter.

As with any :mod:`multiprocessing` start method but ``fork``, each fork first imports the main
module of the process that asked for it (not as ``__main__``): a script, rather than pytest, that
runs faber this way keeps its work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NoReturn

# Imported once by the server, so each fork starts with them: the command line and what a migrate,
# a status and a rollback import as they run (a module missing here is imported by the run itself;
# one not installed is skipped).
_PRELOADED_MODULES = [
    "faber_core.testing.forked",
    "faber_core.command",
    "faber_core.cli",
    "faber_core.api",
    "faber_core.workflow",
    "faber_core.fleet",
    "faber_core.telemetry",
    "faber_core.audit.jsonl",
    "faber_core.backup.pg_dump",
    "faber_core.backup.restore",
    "faber_core.backup.swap",
    "faber_core.backup.database_properties",
    "faber_core.engines.health",
    "faber_core.postgres.estimate",
    "faber_core.postgres.health",
    "faber_core.postgres.leftovers",
    "faber_core.postgres.scratch",
    "faber_core.postgres.url",
    "faber_core.postgres.passwords",
    "faber_core.safety.preflight",
    "faber_core.safety.lint",
    "faber_core.safety.staging_proof",
    "faber_core.safety.history",
    "faber_core.safety.analysis",
    "faber_core.safety.checks",
    "faber_core.safety.estimate",
    "faber_core.support.node",
    "faber_core.testing.sqlfiles",
    "pglast.parser",
    "pydantic.type_adapter",
    "typer._adapters",
    "typer._click.decorators",
    "encodings.idna",
    "statistics",
    "faber_prisma.plugin",
    "faber_typeorm.plugin",
    "faber_sequelize.plugin",
    "faber_rds_backup.plugin",
    "faber_plainsql.plugin",
    "faber_pgdump_dir.plugin",
    "boto3",
]

_INTERPRETER_SETTINGS = ("PYTHON", "LC_", "LANG")


def can_fork_with(environ: dict[str, str]) -> bool:
    """Whether a run with ``environ`` may be a fork: it sets the variables the interpreter reads as
    it starts as the server was started with (this process's environment when first asked)."""
    return _interpreter_settings(environ) == _server().interpreter_settings


def _interpreter_settings(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name.startswith(_INTERPRETER_SETTINGS)}


class ForkedFaber:
    """A run started by :func:`start_forked`, with the part of :class:`subprocess.Popen`'s
    interface that follows, signals and waits for it (``returncode`` negative: killed by that
    signal)."""

    def __init__(self, args: list[str], process: multiprocessing.process.BaseProcess) -> None:
        self.args = args
        self.returncode: int | None = None
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # once it has ended, its pid may be another process's
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_forked(
    args: list[str],
    *,
    cwd: Path,
    environ: dict[str, str],
    stdin: Path,
    stdout: Path,
    stderr: Path,
    new_session: bool = False,
) -> ForkedFaber:
    """Start ``python -m faber_core ARGS`` as a fork, in ``cwd`` with exactly ``environ``, its
    standard streams opened on these files (the output files must exist), in a process session
    of its own if ``new_session``."""
    server = _server()
    process = server.context.Process(
        target=_run_as_main,
        args=(args, str(cwd.absolute()), environ, server.interpreter, [stdin, stdout, stderr], new_session),
    )
    process.start()
    return ForkedFaber([sys.executable, "-m", "faber_core", *args], process)


def run_faber_forked(
    args: list[str], *, cwd: str | Path | None, environ: dict[str, str], input: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``python -m faber_core ARGS`` as a fork: ``input`` on its stdin, its output once it ends
    (text, newlines translated), as :func:`subprocess.run` with ``text=True`` returns them.
    Raises :class:`subprocess.TimeoutExpired` (the run killed) after ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="faber-run-") as scratch:
        stdin, stdout, stderr = (Path(scratch, name) for name in ("stdin", "stdout", "stderr"))
        stdin.write_text(input)
        stdout.touch()
        stderr.touch()
        run = start_forked(
            args, cwd=Path(cwd or Path.cwd()), environ=environ, stdin=stdin, stdout=stdout, stderr=stderr
        )
        try:
            run.wait(timeout)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise
        return subprocess.CompletedProcess(run.args, run.returncode, stdout.read_text(), stderr.read_text())


@dataclass(frozen=True)
class _NewInterpreter:
    """What a new interpreter started here has that a fork must be given: its ``sys.path`` after
    its script's directory (a fork's own is the server's: the test runner's, with its test
    directories), and its standard streams' (encoding, errors, write_through)."""

    path: list[str]
    streams: list[tuple[str, str, bool]]


@dataclass(frozen=True)
class _Server:
    context: multiprocessing.context.ForkServerContext
    interpreter: _NewInterpreter
    interpreter_settings: dict[str, str]


_PROBE = """
import json, sys
streams = [(stream.encoding, stream.errors, stream.write_through) for stream in (sys.stdin, sys.stdout, sys.stderr)]
print(json.dumps({"path": sys.path[1:], "streams": streams}))
"""


@cache
def _server() -> _Server:
    """Start the server, and ask a new interpreter started as it was what it has."""
    settings = _interpreter_settings(os.environ)
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], stdin=subprocess.PIPE, capture_output=True, text=True, check=True
    )
    found = json.loads(probe.stdout)
    interpreter = _NewInterpreter(found["path"], [tuple(stream) for stream in found["streams"]])
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOADED_MODULES)
    multiprocessing.forkserver.ensure_running()
    return _Server(context, interpreter, settings)


def _run_as_main(
    args: list[str],
    cwd: str,
    environ: dict[str, str],
    interpreter: _NewInterpreter,
    streams: list[Path],
    new_session: bool,
) -> NoReturn:
    """In the fork: become ``python -m faber_core ARGS`` run in ``cwd`` with ``environ``."""
    if new_session:
        os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = [cwd, *interpreter.path]
    _open_standard_streams(streams, interpreter.streams)
    code = _exit_code_of_main(args)
    # As the interpreter ends: wait for threads, run the exit functions, flush.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _open_standard_streams(paths: list[Path], settings: list[tuple[str, str, bool]]) -> None:
    opened = []
    for fd, (path, (encoding, errors, write_through)) in enumerate(zip(paths, settings, strict=True)):
        descriptor = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        os.dup2(descriptor, fd)
        os.close(descriptor)
        stream = open(fd, "r" if fd == 0 else "w", encoding=encoding, errors=errors, closefd=False)
        if fd > 0:
            stream.reconfigure(write_through=write_through)
        opened.append(stream)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = opened


def _exit_code_of_main(args: list[str]) -> int:
    """Run faber's ``__main__`` and return the exit code the interpreter would end with (negative:
    the signal it would end by)."""
    sys.argv = [str(Path(__file__).parent.parent / "__main__.py"), *args]
    try:
        runpy.run_module("faber_core", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code is None:
            return 0
        if isinstance(exit.code, int):
            return exit.code & 0xFF
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException as error:
        sys.excepthook(*sys.exc_info())
        return -signal.SIGINT if isinstance(error, KeyboardInterrupt) else 1
    return 0
