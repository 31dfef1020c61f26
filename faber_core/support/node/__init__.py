"""Handlers for JavaScript ORMs: a Node script drives the ORM's own migration API, faber reads JSON lines.

faber-typeorm and faber-sequelize are built on this module, and a handler for another Node ORM
can be too. Its stable API:

- :class:`NodeTool`: what faber needs to know about one ORM's runner script, including its
  options model, a subclass of :class:`NodeToolOptions` (``rehearsal_data``);
- :class:`NodeHandler`: the hook implementations of a migration tool whose work a runner does
  (prepare: start the runner; status; validate: load the pending migration modules; preview by
  rehearsal on a throwaway copy; apply; resolve ``--applied``: record a pending migration as
  run), registered as the plugin object
  (``[project.entry-points.faber] mytool = "faber_mytool.plugin:handler"``);
- :func:`run_runner` (a request to the run's runner), :func:`start_runner` (start it ahead of
  its first request), and :class:`RunnerResult`, :class:`Rehearsed`,
  :data:`NOT_REHEARSED`, for a handler that needs more than :class:`NodeHandler` does;
- ``runner-common.cjs``, which every runner script loads with
  ``require(process.env.FABER_RUNNER_COMMON)``: the protocol below, setup errors, the approved
  plan, loading modules from the project's ``node_modules``, and which migration issued a query.

A runner serves one run: faber starts it once (``node <runner> <args>``, as the deploy begins:
``faber_migration_prepare``), it loads the project's ORM from the project's ``node_modules`` once,
as soon as it has the nonce (while faber prepares the deploy), and answers each request faber writes on
its stdin, one JSON object per line, each naming the database it is for (the target, or the
throwaway copy a rehearsal applies to). The first line on stdin is the run's nonce, a random
token the runner reads before it loads any project code::

    {"command": "status", "connection": {"engine": "postgres", "host": ..., "port": 5432, "user": ...,
     "password": ..., "database": ..., "options": ..., "application_name": ..., "tls": null}}
    {"command": "load", "connection": ..., "migrations": ["<migration name>", ...]}
    {"command": "mark_applied", "connection": ..., "migrations": ["<migration name>"]}
    {"command": "apply", "connection": ..., "expected": ["<migration name>", ...],
     "session_statements": ["SET SESSION lock_wait_timeout = 5, ...", ...], "queries": "of_failure",
     "lock_check": "SELECT ...", "confirm_each_migration": true, "migration_lock": "SELECT ...",
     "measure_writes": {"start": [...], "before_commit": [...], "after_failure": [...], "after_unmeasured": [...]}}

with one JSON object per line on the protocol pipe (the descriptor named by
``FABER_RUNNER_PROTOCOL_FD``), each carrying the nonce, the last one ``done``::

    {"event": "status", "local": [{"name": ..., "path": ..., "transactional": true}],
     "records": [{"name": ...}], "bookkeeping_table": "\\"public\\".\\"migrations\\""}
    {"event": "migration_session", "pid": 4242, "started": "<backend_start, microseconds since the epoch>",
     "bookkeeping_table": ...}
    {"event": "migration_started", "name": ..., "transactional": true}
    {"event": "migration_outside_transaction", "name": ...}
    {"event": "query", "name": ..., "phase": "migration" | "bookkeeping", "sql": ..., "parameters": [...]}
    {"event": "migration_finished", "name": ..., "duration_seconds": ..., "table_writes": {"public.users": 40}}
    {"event": "migration_failed", "name": ..., "code": "42P07", "message": ..., "query": ...,
     "transaction_rolled_back": true, "duration_seconds": ..., "at_lock_check": true, "started": true,
     "table_writes": null}
    {"event": "migration_load_failed", "name": ..., "file": "migrations/...js", "message": ...}
    {"event": "setup_error", "kind": "module_missing" | "module_unloadable" | "typescript_loader_missing"
     | "load_failed" | "migration_load_failed" | "not_regular_file" | "not_found" | "unsupported" | "plan_mismatch"
     | "connection_failed" | "wrong_engine" | "invalid", "message": ..., "module": ..., "file": ...,
     "project_engine": ...}
    {"event": "loading", "what": "the data source", "file": "data-source.js"}
    {"event": "loaded"}
    {"event": "done", "exit_code": 0}

A ``setup_error`` of kind ``wrong_engine`` says the project's own setting (Sequelize's ``dialect``,
TypeORM's DataSource ``type``) names another engine than the request's database's
(``wrongEngine`` in ``runner-common.cjs``): ``project_engine`` is the label of the one it names
(``MySQL/MariaDB``; null for an engine faber deploys to neither), so that the error says which
database to give the environment.

``mark_applied`` (``faber resolve --applied``) writes the ORM's own record of the one named
pending migration exactly as the ORM writes it for a migration that ran (through the ORM: its
table created if missing), without loading or running the migration; a migration the ORM does not
know or has recorded is a ``setup_error`` of kind ``plan_mismatch``, nothing written.

``load`` (``faber_migration_validate``: a deploy and its preview, before faber's lock, approval
and backup) loads each of the named pending migrations as the apply will, without calling its
``up``, and says each one that cannot be loaded (``migration_load_failed``: a syntax error, a
missing module, a top-level throw, a top-level ``process.exit()``, which throws while a migration
module loads (``exitRefused`` in ``runner-common.cjs``), no ``up``), the loader's message in one line with the line of
the file it points at. It runs the modules' top-level code, which is why ``faber status`` never
asks for it; the ORM would run that code anyway before any migration, and in the same runner,
whose module cache the apply then reads, so each module's top-level code still runs once per
run. A migration module the ORM itself loads to read the status (TypeORM loads every migration
file as it connects) and that fails is a ``setup_error`` of kind ``migration_load_failed`` naming
its file: a :class:`~faber_core.errors.MigrationFailed`.

A step of the runner's that runs project code or waits on the ORM before any migration runs
(loading a project file such as the data source, a config or a migration module; starting the
ORM's connection) is said as it starts (``loading``, naming it and its file) and as it ends
(``loaded``; steps do not nest). One that does not end within the environment's
``runner_load_timeout_seconds`` (a module exporting a Promise that never settles, a connection
that never opens, code that never yields) has the runner stopped, its process group with it, and
the request fails with a :class:`ConfigError` naming the step and its file. A migration file (or
another file the ORM would load) that is not a regular file (a link to ``/dev/zero``, a FIFO, a
directory), whose reading would never end, is refused before it is read (``requireRegularFile``
in ``runner-common.cjs``: ``not_regular_file``, a :class:`ConfigError` naming it).

Migrations run inside the runner and may print anything: their stdout and stderr are output
(shown when something fails), and a line on the protocol pipe without the nonce is ignored, so no
migration can pass for the runner (report a migration applied, or the request done). The nonce is
never in the runner's environment or argv, where project code could read it.

A request's ``connection`` is where faber's own connections go, as
:func:`~faber_core.support.node.connection.runner_connection` resolved it from the URL (a MySQL
request has ``socket`` for a Unix socket; ``tls`` is null where the URL asks nothing of TLS): the
runner gives the ORM these options, never a URL to parse again, which its parser would read
differently (``?dbname=``, ``?socket=``, an IPv6 host, a percent-encoded database name). It
reaches the runner only in the request, never in its environment or argv;
``expected`` lists the migrations faber means to apply, and the runner refuses to start if the
ORM's own list differs. ``session_statements`` (MySQL, whose drivers read no timeout settings
from the environment, unlike node-postgres and ``PGOPTIONS``) give the environment's lock and
statement timeouts: the runner runs them first in every session that applies migrations.
``lock_check`` (a deploy's apply, on PostgreSQL) is faber's lock check as SQL, failing unless
faber's session still holds its lock: the runner runs it as each migration starts, right after
``migration_started`` and before any of the migration's statements, in the migration's own
transaction when it has one (``checkLock`` in ``runner-common.cjs``). Failing, it fails that
migration (``at_lock_check``, nothing of it run: ``transaction_rolled_back`` and ``started``
true where the check ran in its transaction, false where it ran just before one with none) and
the runner starts no other; faber then
raises :class:`~faber_core.errors.LockLost`. ``confirm_each_migration`` (a deploy's apply where
the engine has no such SQL: MySQL) has the runner wait after each ``migration_started`` for a line
on its stdin, ``{"start": true}``, which faber writes once it has checked its lock on its own
session; a lost lock has faber stop the runner there instead, before anything of the migration ran.
``migration_lock`` (a deploy's apply) is SQL that has the session running it hold faber's
migration lock while it lives (:meth:`~faber_core.engines.Engine.migration_lock_statement`): a
runner whose migrations run on one session runs it there first (TypeORM's); Sequelize's pool may
run a migration's queries on any of its connections, whose migrations, outside a transaction,
show their run alive by faber's record instead (:mod:`faber_core.audit.unfinished`).
``"queries": "of_failure"`` (a deploy's apply) asks for the ``query`` events of the migration
that fails only, sent just before its ``migration_failed`` (what of it ran: the failure report
names those statements); a rehearsal gets every query, as the preview shows them.
``measure_writes`` (a deploy's apply on PostgreSQL 15 and later:
:func:`faber_core.backup.writes.measurement_statements`) is the SQL with which the runner measures
the rows each transactional migration writes, on the migration's own connection and in its
transaction (``writesMeasurement`` in ``runner-common.cjs``), what a failed one tried included;
the measure goes with its ``migration_finished`` or ``migration_failed`` as ``table_writes``
(rows per table; null: not measured), so that a restore tells the migrations' rows from the
application's. On PostgreSQL an apply first names the session its migrations run in (``migration_session``), so
that faber, stopped by a signal or finding the runner dead, can end that session and read whether
the migration the runner stopped in committed (a migration whose ``transactional`` is true runs in
one transaction with its row in ``bookkeeping_table``, unless it commits work outside it: a COMMIT
of its own, or a query on another connection, which ``migration_outside_transaction`` says as it
is issued). A ``migration_failed``
says ``transaction_rolled_back`` only of a migration that did neither. Each
request connects on its own and disconnects before ``done``. Every string the runner prints is
redacted before faber looks at it. Exit code 0: done; 1: a migration failed; 2: the setup is
broken (a ``setup_error`` says how); any other end of an apply (the out-of-memory killer, ``kill -9``,
a migration calling ``process.exit()`` in its ``up``) fails the deploy as a failed migration does, naming the
runner's end; in a rehearsal it fails the migration the runner was in. The runner exits when faber
closes its stdin, at the end of the run (:meth:`~faber_core.context.RunContext.close`).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from faber_core import hookimpl, interrupts
from faber_core.context import PROJECT_DIR_VARIABLE, Database, RunContext
from faber_core.engines import LOCK_LOST
from faber_core.errors import ConfigError, FaberError, MigrationFailed, ToolCannotConnect
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    LocalMigration,
    MigrationFailure,
    MigrationPreview,
    MigrationRecord,
    MigrationRefusal,
    MigrationState,
    Resolution,
    ToolInfo,
)
from faber_core.processes import (
    STOP_GRACE_SECONDS,
    child_environment,
    find_program,
    how_it_ended,
    signal_of,
    spawn,
    stop,
)
from faber_core.secrets import Redactor
from faber_core.support.node.connection import runner_connection

COMMON_VARIABLE = "FABER_RUNNER_COMMON"
PROTOCOL_FD_VARIABLE = "FABER_RUNNER_PROTOCOL_FD"
RUNNER_COMMON = Path(__file__).parent / "runner-common.cjs"
"""The protocol and loading helpers every ORM runner requires, shipped with faber-core."""
MIGRATION_FAILED_EXIT = 1
SETUP_ERROR_EXIT = 2
STDERR_TAIL_CHARS = 4000
STDERR_READ_BYTES = 1 << 16
"""How much of a request's output faber reads, from its end: a migration may print gigabytes. It is
redacted whole and shown cut to STDERR_TAIL_CHARS, so a secret cut at its start is never shown."""

Event = dict[str, Any]


@dataclass(frozen=True)
class NodeTool:
    """What faber needs to know about one ORM's runner."""

    name: str
    """The tool name in the config (``typeorm``), also the npm package the project must install."""
    script: Path
    """The runner shipped inside the plugin package."""
    config_key: str
    """Where the files it loads are named, for messages: ``database.typeorm.data_source``."""
    install: str
    """The npm command that installs what the project lacks: ``npm install typeorm pg``."""
    options: type[NodeToolOptions]
    """The model of the tool's config section, ``database.<name>``."""


@dataclass
class RunnerResult:
    events: list[Event]
    returncode: int
    stderr: str
    """The end of what the runner printed during the request (STDERR_READ_BYTES at most), redacted."""

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.get("event") == kind]

    def first(self, kind: str) -> Event | None:
        return next(iter(self.of(kind)), None)


def node_executable() -> str:
    node = find_program("node")
    if node is None:
        raise ConfigError(
            "Node.js is not installed (no `node` on PATH or beside faber's Python): "
            "faber runs the project's own ORM with it",
            suggestions=[
                "Install Node.js 18 or newer (https://nodejs.org/ or your package manager)",
                "Or put the directory holding `node` first on PATH for faber",
            ],
        )
    return str(node)


def run_runner(
    tool: NodeTool,
    context: RunContext,
    command: str,
    args: Iterable[str],
    *,
    database: Database | None = None,
    expected: list[str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    queries_of_failure_only: bool = False,
    lock_check: str | None = None,
    confirm_each_migration: bool = False,
    measure_writes: dict[str, list[str]] | None = None,
    migration_lock: str | None = None,
    wind_down: Callable[[], bool] | None = None,
    migrations: list[str] | None = None,
    copy_of: str | None = None,
) -> RunnerResult:
    """Ask the run's runner (started on first use, ``node <runner> <args>`` in the project
    directory) to do ``command`` on ``database`` (the context's by default), streaming its events.

    ``expected``: the migrations faber means to apply; the runner refuses to start if the ORM's
    own list differs. ``queries_of_failure_only``: report only the failing migration's queries
    (a deploy needs no others). ``lock_check``: faber's lock check as SQL, which the runner runs as
    each migration starts, in its transaction (see :meth:`RunContext.start_migration`).
    ``confirm_each_migration``: the runner waits at each ``migration_started`` until ``on_event``
    has returned (it raises to stop the runner before that migration). ``measure_writes``: the
    SQL measuring each transactional migration's writes
    (:func:`faber_core.backup.writes.measurement_statements`). ``wind_down``: on an interrupt,
    before the runner is stopped (see :meth:`RunnerProcess.request`). ``migrations``: the
    migrations a ``load`` or ``mark_applied`` request is about. ``copy_of``: the name of the database
    a rehearsal runs on a copy of, on the same server: no statement that would act outside the copy
    (the server's roles and settings, or that database by its name, on MySQL) is run there (the
    runner reports it as ``not_rehearsed`` and fails the migration). Raises
    :class:`ConfigError` for a broken setup and :class:`FaberError` when the runner dies without
    saying why or outlives the context's deadline (it is stopped then); a failing migration is an
    event, not an exception.
    """
    target = database or context.database
    runner = start_runner(tool, context, args)
    request: dict[str, Any] = {"command": command, "connection": runner_connection(target)}
    if expected is not None:
        request["expected"] = expected
        if not context.session_timeout_env():  # the driver cannot take the timeouts from its environment
            request["session_statements"] = context.session_timeout_statements()
    if queries_of_failure_only:
        request["queries"] = "of_failure"
    if lock_check is not None:
        request["lock_check"] = lock_check
    if confirm_each_migration:
        request["confirm_each_migration"] = True
    if measure_writes is not None:
        request["measure_writes"] = measure_writes
    if migration_lock is not None:
        request["migration_lock"] = migration_lock
    if migrations is not None:
        request["migrations"] = migrations
    if copy_of is not None:
        request["copy_of"] = copy_of
    result = runner.request(context, request, on_event, wind_down)
    setup_error = result.first("setup_error")
    if setup_error is not None:
        raise setup_failure(tool, context, setup_error, result.stderr)
    if result.returncode not in (0, MIGRATION_FAILED_EXIT) or (result.returncode and not result.of("migration_failed")):
        raise RunnerDied(tool, result)
    return result


class RunnerDied(FaberError):
    """The runner ended in the middle of a request without answering it: killed (the kernel's
    out-of-memory killer, ``kill -9``) or ended by project code (a migration calling
    ``process.exit()``). ``runner_result`` holds the events it sent before it died."""

    def __init__(self, tool: NodeTool, result: RunnerResult) -> None:
        self.how = f"the {tool.name} runner died ({how_it_ended(result.returncode)})"
        """How it ended, for a message: ``the typeorm runner died (killed by SIGKILL (Killed))``."""
        self.runner_result = result
        self.killed_by = signal_of(result.returncode)
        """The signal that killed it (``SIGKILL``); None when it exited."""
        super().__init__(
            f"{self.how[:1].upper()}{self.how[1:]}",
            suggestions=[
                "Run again with the output below in hand; nothing more was applied after the last "
                "migration reported as applied"
            ],
            tool_output=_tail(result.stderr),
        )


def start_runner(tool: NodeTool, context: RunContext, args: Iterable[str]) -> RunnerProcess:
    """The run's runner for ``args``, started if it is not running: it loads the project's ORM and
    migration files at once, so a handler that starts it early has them loaded by its first request."""
    args = tuple(args)
    runner = context.kept((tool.name, args), lambda: RunnerProcess(tool, context, args))
    runner.start()
    return runner


class RunnerProcess:
    """One runner serving a run's requests: Node and the ORM load once per run.

    Its stdout and stderr go to a file; each request's result carries what was written there
    since the previous request's (the first request's, all of it: the runner loads the project
    before it is asked anything). Its events come on a pipe of their own, each line carrying the nonce faber gave
    this runner on stdin. A runner that was stopped (a deadline, Ctrl-C) or died is started
    again by the next request.
    """

    def __init__(self, tool: NodeTool, context: RunContext, args: tuple[str, ...]) -> None:
        self.tool, self.context, self.args = tool, context, args
        self.proc: subprocess.Popen | None = None
        self.protocol: BinaryIO | None = None
        """The protocol pipe, read as bytes: a text reader decodes in Python code, where a signal
        could interrupt it after it took a chunk from the pipe and before it kept it."""
        self.nonce = ""
        self.stderr_file = tempfile.TemporaryFile()
        self.stderr_reported = 0
        """How much of the file the requests' results have carried."""

    def start(self) -> tuple[subprocess.Popen, BinaryIO]:
        """The runner, started (with its nonce) unless it is running."""
        if self.proc is None or self.proc.poll() is not None or self.protocol is None:
            self._close_protocol()
            self.nonce = secrets.token_hex(16)
            # node-postgres reads PGOPTIONS, so the ORM's sessions get faber's lock_timeout too.
            self.proc, self.protocol = _spawn_runner(
                self.tool,
                self.context.project_dir,
                self.args,
                self.nonce,
                {**self.context.project_code_environment(), **self.context.session_timeout_env()},
                withheld=self.context.url_variables(),
                output=self.stderr_file,
            )
        return self.proc, self.protocol

    def _close_protocol(self) -> None:
        if self.protocol is not None:
            self.protocol.close()
            self.protocol = None

    def request(
        self,
        context: RunContext,
        request: dict[str, Any],
        on_event: Callable[[Event], None] | None,
        wind_down: Callable[[], bool] | None = None,
    ) -> RunnerResult:
        """``request`` answered, within ``context``'s deadline (the run's, or a lint rehearsal's).

        An interrupt stops the runner. With ``wind_down`` it first gets the chance to stop on its
        own: the runner is asked to start no further migration (``{"stop": true}`` on its stdin),
        ``wind_down`` runs (it cancels the running migration's statement on the server, and says
        whether the runner may now answer), and for up to :data:`WIND_DOWN_SECONDS` its events are
        heard as usual, the migration it was in reporting itself failed, rolled back, with what it
        tried. Then the interrupt goes on."""
        proc, protocol = self.start()
        events: list[Event] = []
        returncode: int | None = None
        expired = threading.Event()
        timer = _deadline_timer(context.seconds_left(), proc, expired)
        # The runner's step before any migration (loading a project file, connecting) last heard of,
        # bounded by the environment's runner_load_timeout_seconds.
        load_seconds = context.settings.runner_load_timeout_seconds
        step: Event | None = None
        steps = _StepDeadline(load_seconds, proc)
        try:
            _write_line(proc, request)
            done = False
            # Waiting for the next line, an interrupt loses nothing (it stays in the pipe); once a line
            # is read, it is handled before the interrupt is raised: otherwise faber would not know
            # of a migration the runner reported finished (committed).
            while not done and protocol.peek(1):
                with interrupts.deferred():
                    event = _parse(protocol.readline(), self.nonce, context.redactor, context.database.engine.name)
                    if event is None:
                        continue
                    if event["event"] == "done":
                        returncode, done = event.get("exit_code"), True
                        continue
                    if event["event"] == "loading":
                        step = event
                        steps.begin()
                        continue
                    if event["event"] == "loaded":
                        steps.end()
                        continue
                    events.append(event)
                    if on_event is not None:
                        on_event(event)
                    if event["event"] == "migration_started" and request.get("confirm_each_migration"):
                        _write_line(proc, {"start": True})
            if not done:
                returncode = proc.wait()
        except BaseException as stopped:
            # Ctrl-C or a failing listener: the child must not keep migrating on its own.
            if isinstance(stopped, KeyboardInterrupt) and wind_down is not None:
                self._wind_down(proc, protocol, wind_down, on_event, context.redactor)
            stop(proc)
            if isinstance(stopped, KeyboardInterrupt) and on_event is not None:
                # What it wrote before it stopped (a migration it finished, the next one started)
                # is still in the pipe: the listener hears it, so faber knows what committed.
                for event in self._written_before_it_stopped(protocol, context.redactor):
                    on_event(event)
            raise
        finally:
            steps.close()
            if timer is not None:
                timer.cancel()
        written = self.stderr_file.seek(0, os.SEEK_END)
        start = self.stderr_file.seek(max(self.stderr_reported, written - STDERR_READ_BYTES))
        output = self.stderr_file.read(written - start)
        stderr = context.redactor.redact(output.decode("utf-8", errors="replace"))
        self.stderr_reported = written
        if steps.expired.is_set():
            assert step is not None  # its deadline is what expired
            raise self._overdue(step, load_seconds, stderr)
        if expired.is_set():
            raise FaberError(f"The {self.tool.name} runner did not finish in the time allowed and was stopped")
        return RunnerResult(events, returncode, stderr)

    def _overdue(self, step: Event, seconds: float, stderr: str) -> ConfigError:
        """The error for a ``step`` that did not end within ``seconds``: the runner was stopped."""
        what, file = step.get("what") or "a step", step.get("file") or "a project file"
        return ConfigError(
            f"{what[:1].upper()}{what[1:]} ({file}) did not finish within {seconds:g} s, so the {self.tool.name}"
            " runner was stopped",
            suggestions=[
                f"Check that {file} finishes loading on its own: node -e \"require('./{file}')\" in "
                f"{self.context.project_dir} (a Promise that never settles, a connection that never opens)",
                "If it only needs longer, raise runner_load_timeout_seconds for this environment",
            ],
            result={"step": what, "file": file, "runner_load_timeout_seconds": seconds},
            tool_output=_tail(stderr) or None,
        )

    def _wind_down(
        self,
        proc: subprocess.Popen,
        protocol: BinaryIO,
        wind_down: Callable[[], bool],
        on_event: Callable[[Event], None] | None,
        redactor: Redactor,
    ) -> None:
        """After an interrupt (:meth:`request`): the runner asked to stop, then heard until it has
        answered, for at most :data:`WIND_DOWN_SECONDS`; then it is stopped (code that never
        yields, a migration awaiting a timer), and the caller reads what it wrote meanwhile."""
        _write_line(proc, {"stop": True})
        if not wind_down():
            return
        timer = threading.Timer(WIND_DOWN_SECONDS, stop, [proc])
        timer.daemon = True
        timer.start()
        try:
            while protocol.peek(1):
                event = _parse(protocol.readline(), self.nonce, redactor, self.context.database.engine.name)
                if event is None:
                    continue
                if event["event"] == "done":
                    return
                if on_event is not None:
                    on_event(event)
        finally:
            timer.cancel()

    def _written_before_it_stopped(self, protocol: BinaryIO, redactor: Redactor) -> list[Event]:
        """The events left in the pipe of a runner that was stopped, read without waiting for more
        (a process the runner started might still hold the pipe open)."""
        lines = []
        try:
            os.set_blocking(protocol.fileno(), False)
            while line := protocol.readline():
                lines.append(line)
        except (OSError, ValueError):
            pass  # the pipe is gone: nothing more to hear
        self._close_protocol()  # the next request starts a new runner, with a pipe of its own
        parsed = (_parse(line, self.nonce, redactor, self.context.database.engine.name) for line in lines)
        return [event for event in parsed if event is not None and event["event"] != "done"]

    def close(self) -> None:
        """Let the runner end (it exits when its stdin closes), stopping it if it does not."""
        if self.proc is not None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=STOP_GRACE_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                stop(self.proc)
        self._close_protocol()
        self.stderr_file.close()


def _spawn_runner(
    tool: NodeTool,
    project_dir: Path,
    args: Iterable[str],
    nonce: str,
    environment: dict[str, str],
    *,
    withheld: Collection[str],
    output: BinaryIO,
) -> tuple[subprocess.Popen, BinaryIO]:
    """``node <runner> <args>`` started in ``project_dir`` and given its ``nonce``, with
    ``environment`` beside the inherited one less ``withheld``; its stdout and stderr go to ``output``.
    Returns it and the protocol pipe it writes its events on."""
    protocol_read, protocol_write = os.pipe()
    protocol = open(protocol_read, "rb")
    env = child_environment(
        {COMMON_VARIABLE: str(RUNNER_COMMON), PROTOCOL_FD_VARIABLE: str(protocol_write), **environment},
        withheld=withheld,
    )
    try:
        proc = spawn(
            [node_executable(), str(tool.script), *args],
            cwd=project_dir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=output,
            pass_fds=(protocol_write,),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except BaseException:
        protocol.close()
        raise
    finally:
        os.close(protocol_write)  # the runner's copy alone: its end is the protocol's end
    assert proc.stdin is not None
    try:
        proc.stdin.write(nonce + "\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # the runner died: the request reports its exit code and stderr
    return proc, protocol


OUTSIDE_A_RUN_SECONDS = 20.0
"""How long a request outside a run may take (``faber init`` reading a project's files through its
tool): project code that hangs there (a ``.sequelizerc`` that never returns) is given up on, and
init goes on with what it finds without it, rather than wait a deploy's runner_load_timeout."""


def ask_outside_a_run(tool: NodeTool, project_dir: Path, command: str) -> RunnerResult:
    """``command`` answered by a runner started for it alone, in ``project_dir``, outside any run
    (``faber init``, before the project has a config): a request that needs no database. The
    runner is stopped if it has not answered within :data:`OUTSIDE_A_RUN_SECONDS` (a
    :class:`FaberError`); the variables the starter config reads database URLs from are kept from
    the project code it runs. Raises :class:`ConfigError` where Node is missing; the runner's
    ``setup_error`` is an event."""
    from faber_core.scaffold import STARTER_URL_VARIABLES  # faber init alone asks outside a run

    nonce = secrets.token_hex(16)
    redactor = Redactor()
    with tempfile.TemporaryFile() as output:
        proc, protocol = _spawn_runner(
            tool,
            project_dir,
            (),
            nonce,
            {PROJECT_DIR_VARIABLE: str(project_dir)},
            withheld=STARTER_URL_VARIABLES,
            output=output,
        )
        expired = threading.Event()
        timer = _deadline_timer(OUTSIDE_A_RUN_SECONDS, proc, expired)
        try:
            _write_line(proc, {"command": command})
            assert proc.stdin is not None
            proc.stdin.close()  # one request: the runner ends once it has answered
            events = [event for line in protocol if (event := _parse(line, nonce, redactor, None)) is not None]
            returncode = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            stop(proc)
            protocol.close()
        if expired.is_set():
            raise FaberError(
                f"The {tool.name} runner did not answer within {OUTSIDE_A_RUN_SECONDS:g} s and was stopped"
            )
        output.seek(max(0, output.seek(0, os.SEEK_END) - STDERR_READ_BYTES))
        stderr = redactor.redact(output.read().decode("utf-8", errors="replace"))
    done = [event for event in events if event["event"] == "done"]
    steps = ("done", "loading", "loaded")
    return RunnerResult(
        [event for event in events if event["event"] not in steps],
        done[0].get("exit_code") if done else returncode,
        stderr,
    )


def _write_line(proc: subprocess.Popen, message: dict[str, Any]) -> None:
    """``message`` on the runner's stdin, one JSON line."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # the runner died: its exit code and stderr say why


def _deadline_timer(seconds: float | None, proc: subprocess.Popen, expired: threading.Event) -> threading.Timer | None:
    if seconds is None:
        return None

    def expire() -> None:
        expired.set()
        stop(proc)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


class _StepDeadline:
    """Stops the runner when one of its steps (``loading`` to ``loaded``) lasts longer than
    ``seconds``. One thread watches every step of a request: a timer thread per step started
    600 threads in a Sequelize deploy of 300 migrations (each module is a step as the load check
    and the apply read it), which cost it CPU and wall time (docs/performance.md)."""

    def __init__(self, seconds: float, proc: subprocess.Popen) -> None:
        self.seconds, self.proc = seconds, proc
        self.expired = threading.Event()
        self._deadline: float | None = None
        """When the running step is overdue; None between steps."""
        self._checked = threading.Lock()
        """Held while the watcher decides, so that a step ended meanwhile is never taken for overdue."""
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def begin(self) -> None:
        with self._checked:
            self._deadline = time.monotonic() + self.seconds
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="faber runner step deadline", daemon=True)
            self._watcher.start()

    def end(self) -> None:
        with self._checked:
            self._deadline = None

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        # It wakes at the deadline it last saw, or a step's length after it saw none: never later
        # than the running step's deadline, which only a later step can replace with a later one.
        while True:
            with self._checked:
                deadline = self._deadline
                wait = self.seconds if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    self.expired.set()
                    break
            if self._closed.wait(wait):
                return
        stop(self.proc)


def _parse(raw: bytes, nonce: str, redactor: Redactor, dialect: str | None) -> Event | None:
    """A protocol line carrying ``nonce`` as a dict (without the nonce), every string redacted;
    anything else written on the pipe is ignored. The SQL a migration ran (a ``query`` event's
    ``sql``, a failure's ``query``), in the engine's ``dialect``, is the only text of a code
    migration faber sees: the passwords it writes are learned first, so that this event's error
    message and everything after it mask them. ``dialect`` None: a request outside a run, on no
    database, whose events carry no SQL."""
    line = raw.decode("utf-8", errors="replace").strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or "event" not in event or event.pop("nonce", None) != nonce:
        return None
    for key in ("sql", "query"):
        if dialect is not None and isinstance(event.get(key), str):
            redactor.learn_sql(event[key], dialect)
    return _redact(event, redactor)


def _redact(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.redact(value)
    if isinstance(value, list):
        return [_redact(item, redactor) for item in value]
    if isinstance(value, dict):
        return {key: _redact(item, redactor) for key, item in value.items()}
    return value


def _tail(text: str) -> str:
    return text[-STDERR_TAIL_CHARS:].strip()


def setup_failure(tool: NodeTool, context: RunContext, event: Event, stderr: str) -> FaberError:
    kind = event.get("kind")
    message = event.get("message") or "unknown error"
    project = context.project_dir
    if kind == "module_missing":
        module = event.get("module") or tool.name
        return ConfigError(
            f"{module} is not installed in the project ({project}): faber runs the project's own {tool.name}",
            suggestions=[
                f"Install the project's dependencies in {project}: npm ci (or npm install)",
                f"Or add it: {tool.install}",
                "faber never falls back to npx: it would be slower and could install another version",
            ],
        )
    if kind == "module_unloadable":
        module = event.get("module") or tool.name
        return ConfigError(
            f"Node cannot load {module} from the project ({project}), though it is installed: {message}",
            suggestions=[
                "Node refuses packages in a folder whose path holds a backslash: move or rename the project's folder"
                if "\\" in str(project)
                else f"Check the installation in {project}: npm ci (or npm install)",
            ],
        )
    if kind == "typescript_loader_missing":
        file = event.get("file") or "the file"
        return ConfigError(
            f"{file} is TypeScript and ts-node is not installed in the project",
            suggestions=[
                "Install it: npm install --save-dev ts-node typescript",
                f"Or compile the project and point {tool.config_key} at the JavaScript output (e.g. dist/...js)",
            ],
        )
    if kind == "load_failed":
        file = event.get("file") or "a project file"
        return ConfigError(
            f"Could not load {file}: {message}",
            suggestions=[
                f"Check that it runs on its own: node -e \"require('./{file}')\" in {project}",
                f"Check {tool.config_key}",
            ],
            tool_output=_tail(stderr) or None,
        )
    if kind == "migration_load_failed":
        file = event.get("file") or "a migration file"
        return MigrationFailed(
            f"Migration file {file} cannot be loaded: {message}. Nothing was run or changed",
            result={"file": file, "reason": message},
            suggestions=[
                f"Fix {file}, then retry; node -e \"require('./{file}')\" in {project} shows the same error",
                f"{tool.name} loads every migration file before it runs any, so none can be applied until it loads",
            ],
            tool_output=_tail(stderr) or None,
        )
    if kind == "not_regular_file":
        file = event.get("file") or "the file"
        return ConfigError(
            message,
            suggestions=[
                f"{file} must be a regular file: replace it with the migration's source "
                "(a FIFO waits forever, a device such as /dev/zero never ends, a directory is no module)",
                "Nothing was run or changed",
            ],
            result={"file": file},
        )
    if kind == "connection_failed":
        code = f" ({event['code']})" if event.get("code") else ""
        return ToolCannotConnect(
            f"{tool.name} could not connect to the {context.environment} database{code}: {message}",
            details=f"{tool.name} could not connect{code}: {message}",
            suggestions=["Verify the database is running and reachable", f"Check {context.database.source}"],
        )
    if kind == "wrong_engine":
        return ConfigError(message, suggestions=[_database_for(context, event.get("project_engine"), tool)])
    if kind == "plan_mismatch":
        return ConfigError(
            message,
            suggestions=[
                "Nothing was applied",
                "The migration files or the database changed while faber ran: run the command again",
            ],
        )
    return ConfigError(
        message,
        suggestions=[f"Check {tool.config_key} and the project's {tool.name} setup"],
        tool_output=_tail(stderr) or None,
    )


def _database_for(context: RunContext, project_engine: str | None, tool: NodeTool) -> str:
    """What to give an environment whose database is not of the engine the project's migrations are
    written for (``project_engine``, a label; None: an engine faber deploys to neither)."""
    if project_engine is None:
        return f"Check {tool.config_key} and the project's {tool.name} setup"
    variable = context.settings.database_url_env
    if variable is None:  # dev on the embedded PostgreSQL
        from faber_core.scaffold import MYSQL_DEV_URL_ENV

        return (
            f"{context.environment} runs on faber's embedded PostgreSQL unless the config names its database: set "
            f"database.environments.{context.environment}.database_url_env to a variable holding a {project_engine} "
            f"URL (e.g. {MYSQL_DEV_URL_ENV}) and export it"
        )
    return f"Point ${variable} at a {project_engine} database: the project's migrations are written for it"


# Status ---------------------------------------------------------------------------------


def read_state(tool: NodeTool, context: RunContext, args: Iterable[str]) -> MigrationState:
    status = _status_event(tool, context, args)
    return MigrationState(
        tool=tool.name,
        local=[
            LocalMigration(name=item["name"], path=item.get("path"), transactional=item.get("transactional"))
            for item in status["local"]
        ],
        records=[MigrationRecord(name=item["name"], state="applied") for item in status["records"]],
        bookkeeping_table=status.get("bookkeeping_table"),
    )


def _status_event(tool: NodeTool, context: RunContext, args: Iterable[str]) -> Event:
    result = run_runner(tool, context, "status", args)
    status = result.first("status")
    if status is None:
        raise FaberError(f"The {tool.name} runner reported no status", tool_output=_tail(result.stderr))
    return status


# Resolve --------------------------------------------------------------------------------


def mark_applied(tool: NodeTool, context: RunContext, name: str, args: Iterable[str]) -> MigrationState:
    """``faber resolve ENV --applied NAME``: the runner records the pending migration ``name`` in the
    ORM's own history as the ORM records one that has run, its ``up`` not called (the
    ``mark_applied`` request). Refused, nothing written, for a migration the ORM does not know or
    has already recorded."""
    state = read_state(tool, context, args)
    if name in state.applied:
        raise ConfigError(
            f"Migration {name} is already applied: {tool.name} records it in {state.bookkeeping_table}; "
            "nothing was changed",
            suggestions=[f"faber status {context.environment} lists the applied and pending migrations"],
        )
    if name not in state.pending:
        raise ConfigError(
            f"{tool.name} has no migration named {name} in {context.project_dir}; nothing was changed",
            suggestions=[
                f"faber status {context.environment} lists the migrations {tool.name} knows",
                "Give the name as the status shows it",
            ],
        )
    run_runner(tool, context, "mark_applied", args, migrations=[name])
    return read_state(tool, context, args)


def cannot_mark_rolled_back(tool: NodeTool, context: RunContext, name: str) -> ConfigError:
    """``--rolled-back`` of a migration faber's record of a killed deploy does not name (that case
    never reaches the handler): the ORM records a migration only once it has run, so it has no
    failed one to mark."""
    return ConfigError(
        f"{tool.name} cannot mark migration {name} rolled back: {tool.name} records a migration only once it "
        "has run, and faber's record of a killed deploy does not name it; nothing was changed",
        suggestions=[
            f"faber status {context.environment} names what is failed and why",
            f"faber resolve --rolled-back applies to migrations faber's record of a killed {tool.name} deploy reports "
            "as failed",
        ],
    )


# Validate -------------------------------------------------------------------------------


def refuse_unloadable(
    tool: NodeTool, context: RunContext, pending: list[LocalMigration], args: Iterable[str]
) -> list[MigrationRefusal]:
    """Each pending migration whose module cannot be loaded, loaded by the runner as the apply would
    load it, its ``up`` not called (the ``load`` request); refused with the file and the loader's
    message."""
    if not pending:
        return []
    result = run_runner(tool, context, "load", args, migrations=[m.name for m in pending])
    return [
        MigrationRefusal(
            name=event["name"],
            path=event.get("file"),
            reason=f"{event.get('file') or event['name']} cannot be loaded: {event.get('message') or 'unknown error'}",
        )
        for event in result.of("migration_load_failed")
    ]


# Apply ----------------------------------------------------------------------------------


def apply(tool: NodeTool, context: RunContext, pending: list[LocalMigration], args: Iterable[str]) -> ApplyOutcome:
    """Apply every pending migration through the runner, telling listeners as each one goes.

    Stopped by an interrupt, it says what it knows of the migration that was running before
    letting the interrupt propagate; a runner that died fails the deploy as a migration does
    (:func:`_outcome_of_death`). What faber knows of the migration the runner stopped in:
    see :func:`_committed`."""
    session: Event | None = None
    running: tuple[Event, float] | None = None
    """The migration started and not yet reported finished, and when faber heard it start."""
    outside_transaction: set[str] = set()
    """The transactional migrations that committed work of their own outside their transaction."""
    failed: Event | None = None
    """The runner's report of a migration that failed (one an interrupt stopped, as it wound down)."""

    def progress(event: Event) -> None:
        nonlocal session, running, failed
        if event["event"] == "migration_session":
            session = event
        elif event["event"] == "migration_outside_transaction":
            outside_transaction.add(event["name"])
        elif event["event"] == "migration_started":
            running = (event, time.monotonic())
            # Checks faber's lock where the runner waits for it (raising stops the runner there); the
            # runner's own lock check otherwise.
            context.start_migration(event["name"], in_transaction=lock_check is not None)
        elif event["event"] == "migration_finished":
            context.migration_applied(applied_migration(event))
            running = None
        elif event["event"] == "migration_failed":
            failed = event

    def settled() -> Settled | None:
        """What became of the migration the runner was in when it stopped, if it was in one."""
        if running is None:
            return None
        event, started_at = running
        duration = round(time.monotonic() - started_at, 3)
        if failed is not None and failed["name"] == event["name"]:
            # It reported itself as the interrupt wound the runner down: rolled back, measured.
            rolled_back = bool(failed.get("transaction_rolled_back"))
            return Settled(event["name"], duration, False, rolled_back, failed.get("table_writes"))
        atomic = bool(event.get("transactional")) and event["name"] not in outside_transaction
        committed = _committed(context, session, event["name"]) if session is not None else None
        return Settled(event["name"], duration, committed, atomic)

    def wind_down() -> bool:
        """On an interrupt, where the runner named its session: cancel the statement it runs there,
        so that the migration it is in fails, rolls back and reports what it tried."""
        if session is None:
            return False
        if running is not None:
            _cancel_statement(context, session)
        return True

    expected = [m.name for m in pending]
    # The runner applies every migration in one request: it runs faber's lock check as each one starts
    # where the engine has it as SQL (PostgreSQL); elsewhere it waits there while faber checks.
    lock_check = context.lock_check_in_transaction
    measure_writes = None
    if context.database.engine.supports("write_counters"):
        from faber_core.backup.writes import measurement_statements  # a deploy's apply alone needs it

        measure_writes = measurement_statements(context.database)
    with context.database.session() as conn:
        migration_lock = context.database.engine.migration_lock_statement(conn, context.database)
    try:
        result = run_runner(
            tool,
            context,
            "apply",
            args,
            expected=expected,
            on_event=progress,
            queries_of_failure_only=True,
            lock_check=lock_check(pending[0].name).statement if lock_check is not None and pending else None,
            confirm_each_migration=lock_check is None and bool(context.before_each_migration),
            measure_writes=measure_writes,
            migration_lock=migration_lock,
            wind_down=wind_down,
        )
    except KeyboardInterrupt:
        stopped = settled()
        if stopped is not None and stopped.committed:
            context.migration_applied(AppliedMigration(name=stopped.name, duration_seconds=stopped.duration_seconds))
        elif stopped is not None and stopped.rolled_back:
            context.migration_failed(stopped.failure("interrupted", pending))
        raise
    except RunnerDied as died:
        return _outcome_of_death(context, died, settled(), pending)
    failed = result.first("migration_failed")
    if lock_check is not None and failed is not None and failed.get("at_lock_check"):
        if LOCK_LOST in (failed.get("message") or ""):
            # The runner checks in the migration's own transaction only where it has one (TypeORM's
            # default); a Sequelize migration, or TypeORM's with transaction = false, never started.
            in_transaction = running is not None and bool(running[0].get("transactional"))
            raise lock_check(failed["name"]).lost(in_transaction=in_transaction)
    return outcome_of(result, {m.name: m.path for m in pending}, context.database.engine.error_code_label)


@dataclass(frozen=True)
class Settled:
    """The migration a runner was in when it stopped (an interrupt, or the runner died), as faber
    could tell afterwards: see :func:`_committed`."""

    name: str
    duration_seconds: float
    committed: bool | None
    """Its row is in the tool's table (True), or not (False); None: faber cannot tell."""
    atomic: bool
    """It ran in one transaction with its row and committed nothing outside it."""
    table_writes: dict[str, int] | None = None
    """The rows it tried to write, where the runner measured them as it stopped."""

    @property
    def rolled_back(self) -> bool:
        """None of it remains: its row is not there, and nothing of it committed outside its transaction."""
        return self.committed is False and self.atomic

    def failure(
        self, stopped: str, pending: list[LocalMigration], output: str | None = None, killed_by: str | None = None
    ) -> MigrationFailure:
        """It, failed: ``stopped`` says how (``interrupted``), then what remains of it; ``killed_by``:
        the signal that killed the runner in it."""
        remains = "its transaction rolled back" if self.rolled_back else "it may have committed in part"
        return MigrationFailure(
            name=self.name,
            error=f"{stopped}; {remains}",
            output=output,
            path=next((m.path for m in pending if m.name == self.name), None),
            transaction_rolled_back=self.rolled_back,
            killed_by=killed_by,
            table_writes=self.table_writes,
        )


def _outcome_of_death(
    context: RunContext, died: RunnerDied, stopped: Settled | None, pending: list[LocalMigration]
) -> ApplyOutcome:
    """A deploy whose runner died (:class:`RunnerDied`) as a failed one: the migration it was in
    failed, rolled back or in part as faber can tell (:func:`_committed`); or, when it died between
    migrations (the one it was in committed, or it was in none), the next one failed before it
    started."""
    result = died.runner_result
    applied = [applied_migration(e) for e in result.of("migration_finished")]
    if stopped is not None and not stopped.committed:
        failure = stopped.failure(f"{died.how} while it ran", pending, died.tool_output, died.killed_by)
        return ApplyOutcome(applied=applied, failure=failure)
    if stopped is not None:
        context.migration_applied(AppliedMigration(name=stopped.name, duration_seconds=stopped.duration_seconds))
        applied.append(AppliedMigration(name=stopped.name, duration_seconds=stopped.duration_seconds))
    committed = {m.name for m in applied}
    following = next((m for m in pending if m.name not in committed), None)
    if following is None:
        raise MigrationFailed(
            f"{died.message} after the last migration, {applied[-1].name}, committed",
            suggestions=died.suggestions,
            tool_output=died.tool_output,
        )
    after = f"after {applied[-1].name} committed" if applied else "before any migration of this deploy ran"
    failure = MigrationFailure(
        name=following.name,
        error=f"{died.how} before it started, {after}; nothing of it ran",
        output=died.tool_output,
        path=following.path,
        transaction_rolled_back=False,
        killed_by=died.killed_by,
        started=False,
    )
    return ApplyOutcome(applied=applied, failure=failure)


# How long faber waits for the server to end the session of a runner it stopped or that died.
_SESSION_END_SECONDS = 5.0
WIND_DOWN_SECONDS = 3.0
"""How long an interrupted runner has to report the migration it was in, once faber cancelled its
statement, before it is stopped (:meth:`RunnerProcess.request`)."""


def _committed(context: RunContext, session: Event, name: str) -> bool | None:
    """Whether migration ``name`` committed, for a runner that stopped in it (an interrupt stopped
    it, or it died) after naming the session its migrations run in (``migration_session``, on
    PostgreSQL): faber ends that session and waits until the server has (its transaction rolls
    back unless its COMMIT had run), then looks for the migration's row in the tool's table. A
    row: it committed whole (the runner stopped during its COMMIT or in the moment after). No
    row: its transaction rolled back, and none of it remains if it was atomic (:class:`Settled`:
    no COMMIT of its own, TypeORM's way to run CREATE INDEX CONCURRENTLY, and no query on another
    connection). None when anything prevents the answer (a database error, a session that does
    not end): faber then reports a migration that may have committed in part, and restores the
    backup for it.
    """
    from psycopg import sql  # only a PostgreSQL runner names its session

    try:
        with context.database.connect() as conn:
            if not _session_ended(conn, int(session["pid"]), str(session["started"])):
                return None
            table = conn.execute(
                "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
                " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                [session["bookkeeping_table"]],
            ).fetchone()
            return table is not None and bool(
                conn.execute(
                    sql.SQL("SELECT 1 FROM {}.{} WHERE name = %s").format(
                        sql.Identifier(table[0]), sql.Identifier(table[1])
                    ),
                    [name],
                ).fetchone()
            )
    except context.database.engine.driver_error:
        return None


# The runner's session ``pid`` that started at ``started`` (microseconds since the epoch), so that
# a later session given the same pid is left alone.
_IDENTIFIED = "pid = %s AND (extract(epoch FROM backend_start) * 1000000)::bigint::text = %s"


def _cancel_statement(context: RunContext, session: Event) -> None:
    """Cancel the statement the runner's migration session (``migration_session``) runs, if any;
    faber goes on whatever stops it (the runner is stopped all the same, soon)."""
    try:
        with context.database.connect() as conn:
            conn.execute(
                f"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE {_IDENTIFIED}",
                [int(session["pid"]), str(session["started"])],
            )
    except context.database.engine.driver_error:
        pass


def _session_ended(conn: Any, pid: int, started: str) -> bool:
    """End the server session ``pid`` that started at ``started`` and wait until it is gone."""
    conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {_IDENTIFIED}", [pid, started])
    deadline = time.monotonic() + _SESSION_END_SECONDS
    while conn.execute(f"SELECT 1 FROM pg_stat_activity WHERE {_IDENTIFIED}", [pid, started]).fetchone():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def applied_migration(finished: Event) -> AppliedMigration:
    """A ``migration_finished`` event as the migration faber reports applied, with the rows it
    wrote where the runner measured them (``table_writes``; None: not measured)."""
    return AppliedMigration(
        name=finished["name"],
        duration_seconds=round(finished["duration_seconds"], 3),
        table_writes=finished.get("table_writes"),
    )


def outcome_of(result: RunnerResult, paths: dict[str, str | None], code_label: str) -> ApplyOutcome:
    """The runner's apply events as an outcome; ``code_label`` names the failure's error code."""
    applied = [applied_migration(e) for e in result.of("migration_finished")]
    failed = result.first("migration_failed")
    if failed is None:
        return ApplyOutcome(applied=applied)
    ran_before = _ran_before(failed, result)
    return ApplyOutcome(
        applied=applied,
        failure=MigrationFailure(
            name=failed["name"],
            error=failure_text(failed, code_label) + _ran_before_report(ran_before),
            output=_failure_output(failed, result.stderr),
            path=paths.get(failed["name"]) or failed.get("path"),
            transaction_rolled_back=bool(failed.get("transaction_rolled_back")),
            started=failed.get("started", True),
            sqlstate=failed.get("code"),
            table_writes=failed.get("table_writes"),
            # None rather than 0 when none ran before it: the migration's own code may have
            # committed something no query event shows, and None is "unknown", the safe side.
            statements_committed=len(ran_before) or None,
        ),
    )


def failure_text(failed: Event, code_label: str) -> str:
    code = failed.get("code")
    return f"{failed.get('message') or 'failed'}" + (f" ({code_label} {code})" if code else "")


def _ran_before(failed: Event, result: RunnerResult) -> list[Event]:
    """Outside a transaction that rolled back (any migration on MySQL, whose DDL commits on its own),
    the failed migration's statements that ran before the failing one, and stayed: outside a
    transaction each commits as it runs (on MySQL every DDL statement commits itself and whatever
    ran before it in its session)."""
    if failed.get("transaction_rolled_back"):
        return []
    ran = [
        event
        for event in result.of("query")
        if event.get("name") == failed["name"] and event.get("phase") == "migration"
    ]
    # The driver logs a query before it runs: the failing one is the last, unless the error came from
    # the migration's own code after its queries.
    if ran and ran[-1]["sql"] == failed.get("query"):
        ran.pop()
    return ran


def _ran_before_report(ran: list[Event]) -> str:
    """Which statements of the failed migration ran before the one that failed, for its error."""
    if not ran:
        return ""
    done = "; ".join(" ".join(_statement(event).split())[:80] for event in ran)
    return f" (at statement {len(ran) + 1} of it; ran before it: {done})"


def _failure_output(failed: Event, stderr: str) -> str:
    parts = [
        f"Database error code: {failed['code']}" if failed.get("code") else None,
        failed.get("message"),
        f"Query: {failed['query']}" if failed.get("query") else None,
        _tail(stderr),
    ]
    return "\n".join(part for part in parts if part)


# Preview by rehearsal --------------------------------------------------------------------


@dataclass
class Rehearsed:
    """One migration as the rehearsal saw it."""

    name: str
    queries: list[str] = field(default_factory=list)
    duration_seconds: float | None = None
    transactional: bool | None = None
    failure: Event | None = None
    outside_its_database: str | None = None
    """The statement the runner did not run on the copy: it changes something outside its database
    (the copy is on the target's server, where it would change the real one)."""


REHEARSAL_DATA = {"auto": None, "always": True, "never": False}
NOT_REHEARSED = "Not rehearsed"
"""The start of the note on a pending migration the rehearsal did not reach."""


class NodeToolOptions(BaseModel):
    """The options every Node tool takes; a tool's options model subclasses it and adds its own."""

    # Every Node tool's options model defers its build: faber validates with a model derived from
    # it (plugin_options), and a project of another tool never uses it.
    model_config = ConfigDict(defer_build=True)

    rehearsal_data: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Copy the rows into the throwaway database the preview and lint rehearse on: always, never, "
        "or auto (when the tables are small).",
    )


def rehearsal_data(tool: NodeTool, context: RunContext) -> bool | None:
    """``database.<tool>.rehearsal_data``: copy the rows into the rehearsal always, never, or when small."""
    return REHEARSAL_DATA[context.tool_options(tool.options).rehearsal_data]


def rehearse(
    tool: NodeTool,
    context: RunContext,
    pending: list[LocalMigration],
    args: Iterable[str],
    *,
    extra_notes: Callable[[RunContext, Rehearsed], list[str]] = lambda _context, _ran: [],
) -> list[MigrationPreview]:
    """Apply ``pending`` to a throwaway copy of the target and describe what each migration did there."""
    args = list(args)
    include_data = rehearsal_data(tool, context)
    bookkeeping = _status_event(tool, context, args).get("bookkeeping_table")
    with context.database.engine.rehearsal_database(
        context, copy_rows_of=[bookkeeping] if bookkeeping else [], include_data=include_data
    ) as rehearsal:
        try:
            result = run_runner(
                tool,
                context,
                "apply",
                args,
                database=rehearsal.database,
                expected=[m.name for m in pending],
                copy_of=context.database.name,
            )
        except RunnerDied as died:
            result = _failed_by_death(died, pending)
    seen = _rehearsed(result)
    # On a copy with the data the measurement stands; on empty tables it would understate a
    # migration that rewrites a big table, so faber's estimate from the target's statistics is used.
    basis = "measured: applied to a rehearsal copy of the schema and data" if rehearsal.includes_data else None
    copy_note = None if rehearsal.includes_data else "Rehearsed on a copy of the schema without the data"
    previews = []
    blocked_by: str | None = None
    for migration in pending:
        ran = seen.get(migration.name)
        if ran is None:
            reason = blocked_by or "the ORM did not run it"
            previews.append(
                MigrationPreview(
                    name=migration.name, sql="", estimated_duration_seconds=0, notes=[f"{NOT_REHEARSED}: {reason}"]
                )
            )
            continue
        notes = [*rehearsal.warnings, *extra_notes(context, ran)]
        if ran.outside_its_database is not None:
            outside = f"{migration.name} changes something outside its database ({ran.outside_its_database})"
            blocked_by = blocked_by or f"{outside}, and was not rehearsed"
            notes.insert(
                0, f"{NOT_REHEARSED}: {outside}: on the copy, on the same server, it would change the real one"
            )
        elif ran.failure is not None:
            blocked_by = blocked_by or f"{migration.name} fails first"
            failed = failure_text(ran.failure, context.database.engine.error_code_label)
            notes.insert(0, f"FAILS in rehearsal: {failed}; deploying it would fail the same way")
        elif copy_note:
            notes.append(copy_note)
        previews.append(
            MigrationPreview(
                name=migration.name,
                sql=";\n".join(ran.queries) + (";" if ran.queries else ""),
                estimated_duration_seconds=round(ran.duration_seconds or 0.0, 3),
                transactional=ran.transactional,
                notes=notes,
                basis=basis,
            )
        )
    return previews


def _failed_by_death(died: RunnerDied, pending: list[LocalMigration]) -> RunnerResult:
    """The events of a rehearsal whose runner died (:class:`RunnerDied`), with a migration failed
    by that death, as the preview reports a failing one: the one it was in, or, when it died
    between migrations, the next one, before it started. A runner that died once every migration
    had run failed none of them: that stays an error."""
    result = died.runner_result
    ended = {e["name"] for e in [*result.of("migration_finished"), *result.of("migration_failed")]}
    running = [e["name"] for e in result.of("migration_started") if e["name"] not in ended]
    if running:
        name, when = running[-1], "while it ran"
    else:
        name, when = next((m.name for m in pending if m.name not in ended), None), "before it started"
    if name is None:
        raise died
    death = {"event": "migration_failed", "name": name, "message": f"{died.how} {when}"}
    return replace(result, events=[*result.events, death])


def _rehearsed(result: RunnerResult) -> dict[str, Rehearsed]:
    seen: dict[str, Rehearsed] = {}
    for event in result.events:
        name = event.get("name")
        if not name:
            continue
        kind = event["event"]
        ran = seen.setdefault(name, Rehearsed(name))
        if kind == "migration_started":
            ran.transactional = event.get("transactional")
        elif kind == "query" and event.get("phase") == "migration":
            ran.queries.append(_statement(event))
        elif kind == "migration_finished":
            ran.duration_seconds = event["duration_seconds"]
        elif kind == "migration_failed":
            ran.failure = event
            ran.duration_seconds = event.get("duration_seconds")
        elif kind == "not_rehearsed":
            ran.outside_its_database = event["statement"]
    return seen


def _statement(event: Event) -> str:
    """A query the ORM sent, as a statement of the migration's SQL (joined by ``;``): its bound
    parameters in a comment on the line before it, not after, where the comment would swallow the
    ``;`` ending it and the lint read two statements as one; and a line break before that ``;``
    where the query's own last line may end in a comment."""
    text = event["sql"].strip().rstrip(";")
    if "--" in text.rpartition("\n")[2]:
        text += "\n"
    if event.get("parameters"):
        text = f"-- parameters: {json.dumps(event['parameters'], default=str)}\n{text}"
    return text


# The handler ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeHandler:
    """A migration tool whose runner script does the work: an object of hook implementations.

    ``arguments`` turns the run's config (``context.tool_options(runner.options)``, validated by
    faber before the run) into the runner's command-line options; ``preview_notes`` adds
    the tool's own notes to each rehearsed migration's preview; ``project_files`` finds the
    project's files that configure the tool, for ``faber init`` (None: faber init looks where it
    would by default). The tool has no interactive development command: dev mode applies pending
    migrations as a deploy does.
    """

    runner: NodeTool
    description: str
    arguments: Callable[[RunContext], list[str]]
    preview_notes: Callable[[RunContext, Rehearsed], list[str]] = field(default=lambda _context, _ran: [])
    project_files: Callable[[Path], list[str] | None] = field(default=lambda _project_dir: None)

    @hookimpl
    def faber_migration_tools(self) -> list[ToolInfo]:
        return [ToolInfo(name=self.runner.name, description=self.description, options=self.runner.options)]

    @hookimpl
    def faber_migration_project_files(self, project_dir: Path) -> list[str] | None:
        return self.project_files(project_dir)

    @hookimpl
    def faber_migration_prepare(self, context: RunContext) -> None:
        with suppress(FaberError, OSError):  # the status read that follows reports it (no Node, ...)
            start_runner(self.runner, context, self.arguments(context))

    @hookimpl
    def faber_migration_status(self, context: RunContext) -> MigrationState:
        return read_state(self.runner, context, self.arguments(context))

    @hookimpl
    def faber_migration_validate(self, context: RunContext, pending: list[LocalMigration]) -> list[MigrationRefusal]:
        return refuse_unloadable(self.runner, context, pending, self.arguments(context))

    @hookimpl
    def faber_migration_preview(self, context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
        return rehearse(self.runner, context, pending, self.arguments(context), extra_notes=self.preview_notes)

    @hookimpl
    def faber_migration_apply(self, context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
        return apply(self.runner, context, pending, self.arguments(context))

    @hookimpl
    def faber_migration_resolve(self, context: RunContext, name: str, resolution: Resolution) -> MigrationState:
        if resolution == "rolled_back":
            raise cannot_mark_rolled_back(self.runner, context, name)
        return mark_applied(self.runner, context, name, self.arguments(context))
