"""Fault injection: kill a real ``faber`` at a real moment, then look at what it left behind.

For faber's own crash-safety tests and for plugin authors who want the same proof for their
handler or backup provider:

- :class:`FaberProcess` runs the ``faber`` command in a subprocess (its own process session) and
  reads the project's audit log (``.faber/audit.log``, one event per line, written as it happens)
  while it runs, so a test waits for a step's event instead of sleeping, then sends a signal.
  It remembers the child processes (pg_dump, psql, node) alive at the moment of the kill.
- :func:`snapshot` takes a database's logical state: its schema as the engine dumps it for
  verification (PostgreSQL: ``pg_dump --schema-only``; MySQL/MariaDB: ``SHOW CREATE``), every
  constraint and index with its validity (PostgreSQL), and the row count of every table.
- :func:`node_runner` finds a handler's Node runner among faber's processes, to kill it alone;
  :data:`WAITING_ON_ADVISORY_LOCK` tells when a migration waits on a lock the test holds;
  :class:`LockTakenMidDeploy` deploys while another run takes faber's lock from it;
  :class:`KilledInsideAMigration` kills a deploy inside a migration that runs outside a
  transaction and checks what the next runs say of it.
- :func:`server_leftovers` lists the sessions and advisory locks still on a database;
  :func:`mysql_leftovers` the sessions and faber's lock still on a MySQL/MariaDB server.
- :class:`AnswerDropped` loses one session's connection right after the server ran its
  ``COMMIT`` (or a MySQL statement), before the client heard it: the moment a client cannot tell
  what committed.
- :func:`top_level_steps` picks a run's workflow steps out of its events, for a test that every
  step has an injection point.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from faber_core.context import Database
from faber_core.postgres.locks import session_lock_key
from faber_core.secrets import Secret
from faber_core.testing import held_event
from faber_core.testing.forked import ForkedFaber, can_fork_with, start_forked

AUDIT_LOG = Path(".faber") / "audit.log"
POLL_SECONDS = 0.01
FABER_COMMAND = [sys.executable, "-m", "faber_core"]

Event = dict[str, Any]


class FaberExited(AssertionError):
    """faber ended before the awaited moment came."""


def top_level_steps(events: list[Event]) -> list[Event]:
    """``step.started`` events of the workflow's own steps (not the steps nested inside them)."""
    depth, found = 0, []
    for event in events:
        if event["kind"] == "step.started":
            if depth == 0:
                found.append(event)
            depth += 1
        elif event["kind"] == "step.finished":
            depth -= 1
    return found


def steps_of_the_last_run(project: Path) -> list[str]:
    """The steps the last run in ``project``'s audit log started, nested ones included, in order."""
    events = [json.loads(line) for line in (project / AUDIT_LOG).read_text().splitlines()]
    last = [e for e in events if e["kind"] == "run.started"][-1]["run_id"]
    return [e["data"]["step"] for e in events if e["run_id"] == last and e["kind"] == "step.started"]


def backup_files(project: Path) -> list[str]:
    """The names of the files under ``project``'s local backups folder (none: no backup was taken)."""
    folder = project / ".faber" / "backups"
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def moments_without_a_point(command: str, events: list[Event], points: Iterable[Any]) -> list[str]:
    """The top-level steps and migrations of a ``command`` run (its ``events``) that no injection
    point of that command (``point.command``, ``point.event(event)``) kills at. For a failed deploy,
    only what follows the failure: the steps before it are the deploy's."""
    moments = top_level_steps(events) + [e for e in events if e["kind"] == "migration.started"]
    if command == "failed-deploy":
        failure = next(i for i, e in enumerate(events) if e["kind"] == "migration.failed")
        moments = [e for e in moments if events.index(e) > failure]
    own = [point for point in points if point.command == command]
    return [
        f"{event['kind']} {event['data'].get('step') or event['data'].get('name')}"
        for event in moments
        if not any(point.event(event) for point in own)
    ]


def event_matcher(kind: str, **data: Any) -> Callable[[Event], bool]:
    """A predicate for events of ``kind`` whose data has every item of ``data``."""

    def matches(event: Event) -> bool:
        return event.get("kind") == kind and all(event.get("data", {}).get(k) == v for k, v in data.items())

    matches.__name__ = f"{kind}{data or ''}"
    return matches


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    start_time: int
    session: int
    command: str

    def alive(self) -> bool:
        """Still running (the same process, not a new one that reused the pid) and not a zombie."""
        now = _process(self.pid)
        return now is not None and now.start_time == self.start_time and _state(self.pid) not in ("Z", "X", None)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return [text[: text.index("(")].strip(), *text[text.rindex(")") + 2 :].split()]


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[1] if fields else None


def _process(pid: int) -> ProcessInfo | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = ""
    # fields: pid, state, ppid, pgrp, session, ... starttime is the 22nd field of /proc/PID/stat.
    return ProcessInfo(pid=pid, start_time=int(fields[20]), session=int(fields[4]), command=command)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(pid: int) -> list[ProcessInfo]:
    """Every living process below ``pid`` in the process tree."""
    parents: dict[int, list[int]] = {}
    for candidate in _all_pids():
        fields = _stat_fields(candidate)
        if fields is not None:
            parents.setdefault(int(fields[2]), []).append(candidate)
    found: list[ProcessInfo] = []
    queue = list(parents.get(pid, []))
    while queue:
        child = queue.pop()
        info = _process(child)
        if info is not None and _state(child) != "Z":
            found.append(info)
        queue += parents.get(child, [])
    return found


def node_runner(pid: int) -> int:
    """The pid of the Node runner (a handler's ``runner.cjs``) among the descendants of faber's
    process ``pid``, for a test that kills the runner while faber lives."""
    return next(info.pid for info in descendants(pid) if "runner.cjs" in info.command)


def deploy_with_the_runner_killed(
    project: Path, ready: Callable[[FaberProcess], object], then: Callable[[], object] | None = None
) -> tuple[int | None, FaberProcess]:
    """``faber migrate staging --yes --json`` in ``project``, its Node runner killed (SIGKILL) once
    ``ready(run)`` returns, as the out-of-memory killer would while faber lives; ``then()`` runs
    after the kill (e.g. to release what held the migration). Its exit code and the ended run."""
    run = FaberProcess.start(project, "migrate", "staging", "--yes", "--json")
    try:
        ready(run)
        os.kill(node_runner(run.pid), signal.SIGKILL)
        if then is not None:
            then()
        return run.finish(), run
    finally:
        run.stop_everything()


def session_members(session: int, *, started_by: int | None = None) -> list[ProcessInfo]:
    """Every living process of process session ``session``; with ``started_by`` (clock ticks since
    boot, :func:`ticks_since_boot`), only those started by then."""
    members = []
    for pid in _all_pids():
        info = _process(pid)
        if info is None or info.session != session or _state(pid) == "Z":
            continue
        if started_by is None or info.start_time <= started_by:
            members.append(info)
    return members


def ticks_since_boot() -> int:
    """Now, in the unit of the process start times /proc gives (clock ticks since boot)."""
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


@dataclass
class FaberProcess:
    """One ``faber`` command running in the background, in a process session of its own.

    Its events are the lines appended to the project's audit log after it started, so run one
    command at a time per project directory (two projects may point at the same database).
    """

    project: Path
    argv: list[str]
    proc: subprocess.Popen | ForkedFaber
    stdout_file: Any
    stderr_file: Any
    log_offset: int
    events: list[Event] = field(default_factory=list)
    children_at_kill: list[ProcessInfo] = field(default_factory=list)
    signal_sent: int | None = None
    ended_at: int | None = None
    """When faber was seen ended (:func:`ticks_since_boot`). Its pid is free from then on: another
    test's faber may get it, and lead a session of the same number (CI starts more processes than
    there are pids), so its own session's members are those started by then."""
    release_file: Path | None = None
    """Created by :meth:`release` to let a run held at an event go on (:mod:`~faber_core.testing.held_event`)."""
    _partial_line: bytes = b""

    @classmethod
    def start(cls, project: Path, *args: str, env: dict[str, str] | None = None) -> FaberProcess:
        """Start ``faber ARGS --cwd PROJECT`` with no terminal (as in CI): a fork of an interpreter
        that has imported faber, unless ``env`` changes how one starts (:mod:`~faber_core.testing.forked`)."""
        return cls.spawn(project, [*FABER_COMMAND, *args, "--cwd", str(project)], env=env)

    @classmethod
    def start_on_a_terminal(
        cls, project: Path, *args: str, env: dict[str, str] | None = None
    ) -> tuple[FaberProcess, int]:
        """:meth:`start` with a pseudo-terminal on stdin, so that faber asks at its prompt; the run
        and the terminal's side to answer on (close it when done)."""
        terminal, seat = pty.openpty()
        try:
            argv = [*FABER_COMMAND, *args, "--cwd", str(project)]
            return cls.spawn(project, argv, env=env, stdin=seat), terminal
        finally:
            os.close(seat)

    def wait_for_prompt(self) -> None:
        """Wait until faber asks its yes/no question on its terminal (:meth:`start_on_a_terminal`)."""
        self.wait_until(lambda: "[y/N]" in self.stderr(), what="the approval prompt")

    @classmethod
    def spawn(
        cls, project: Path, argv: list[str], env: dict[str, str] | None = None, stdin: int = subprocess.DEVNULL
    ) -> FaberProcess:
        """Start ``argv`` (normally faber) in a session of its own, following ``project``'s audit
        log. faber (:data:`FABER_COMMAND`) with no stdin starts as a fork where the environment
        lets it (:mod:`~faber_core.testing.forked`)."""
        log = project / AUDIT_LOG
        offset = log.stat().st_size if log.exists() else 0
        stdout, stderr = tempfile.NamedTemporaryFile(), tempfile.NamedTemporaryFile()
        release_file = Path(tempfile.gettempdir()) / f"faber-hold-release-{uuid.uuid4().hex}"
        environ = {**os.environ, held_event.RELEASE_ENV: str(release_file), **(env or {})}
        proc: subprocess.Popen | ForkedFaber
        faber_args = argv[len(FABER_COMMAND) :] if argv[: len(FABER_COMMAND)] == FABER_COMMAND else None
        if faber_args is not None and stdin == subprocess.DEVNULL and can_fork_with(environ):
            streams = {"stdin": Path(os.devnull), "stdout": Path(stdout.name), "stderr": Path(stderr.name)}
            proc = start_forked(faber_args, cwd=Path.cwd(), environ=environ, new_session=True, **streams)
        else:
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=stdout, stderr=stderr, env=environ, start_new_session=True
            )
        return cls(project, argv, proc, stdout, stderr, offset, release_file=release_file)

    @property
    def pid(self) -> int:
        return self.proc.pid

    # Events -----------------------------------------------------------------------------

    def read_events(self) -> list[Event]:
        """Read what the run appended to the audit log since the last call; return all its events."""
        log = self.project / AUDIT_LOG
        if not log.exists():
            return self.events
        with log.open("rb") as handle:
            handle.seek(self.log_offset)
            chunk = handle.read()
        self.log_offset += len(chunk)
        lines = (self._partial_line + chunk).split(b"\n")
        self._partial_line = lines.pop()
        for line in lines:
            if line.strip():
                self.events.append(json.loads(line))
        return self.events

    def kinds(self) -> list[str]:
        return [event["kind"] for event in self.read_events()]

    def wait_for(
        self, match: Callable[[Event], bool] | str, *, after: Event | None = None, timeout: float = 60
    ) -> Event:
        """Wait for the first event ``match`` accepts (an event kind, or a predicate), after the event
        ``after`` if given."""
        predicate = event_matcher(match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            events = self.read_events()
            start = next(i for i, event in enumerate(events) if event is after) + 1 if after is not None else 0
            found = next((event for event in events[start:] if predicate(event)), None)
            if found is not None:
                return found
            self._check_running(f"event {getattr(predicate, '__name__', predicate)}", deadline)
            time.sleep(POLL_SECONDS)

    def wait_until(self, condition: Callable[[], Any], *, what: str, timeout: float = 30) -> Any:
        """Wait, while faber runs, until ``condition()`` returns something true; return it."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            self._check_running(what, deadline)
            time.sleep(POLL_SECONDS)

    def running(self) -> bool:
        """Whether faber still runs (its end noted, :attr:`ended_at`, once it does not)."""
        if self.ended_at is None and self.proc.poll() is not None:
            self.ended_at = ticks_since_boot()
        return self.ended_at is None

    def _check_running(self, what: str, deadline: float) -> None:
        if not self.running():
            self.read_events()
            raise FaberExited(
                f"faber exited with {self.proc.returncode} before {what}; events: {self.kinds()}\n"
                f"stdout: {self.stdout()[-2000:]}\nstderr: {self.stderr()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise FaberExited(f"timed out waiting for {what}; events so far: {self.kinds()}")

    # Signals and the end ----------------------------------------------------------------

    def kill(self, signum: int) -> None:
        """Send ``signum`` to faber's pid only (as ``kill`` does), noting its children at that moment;
        nothing once faber has ended (its pid may be another process's)."""
        if not self.running():
            return
        self.children_at_kill = descendants(self.pid)
        self.signal_sent = signum
        self.proc.send_signal(signum)

    def release(self) -> None:
        """Let the run go on from the event it is held at, and from every later one
        (:mod:`~faber_core.testing.held_event`)."""
        assert self.release_file is not None
        self.release_file.touch()

    def wait(self, timeout: float | None) -> int | None:
        """faber's exit code (negative: killed by that signal), or None if it still runs after ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.running()
        return self.proc.returncode

    def finish(self, timeout: float = 300) -> int:
        """Wait for faber to end by itself; its exit code."""
        code = self.wait(timeout)
        if code is None:
            self.stop_everything()
            raise FaberExited(f"faber {' '.join(self.argv[3:])} did not finish within {timeout}s")
        return code

    def stdout(self) -> str:
        return _read_all(self.stdout_file)

    def stderr(self) -> str:
        return _read_all(self.stderr_file)

    def surviving_children(self, within: float) -> list[ProcessInfo]:
        """Children that were alive at the kill, or members of faber's session, still running after
        ``within`` seconds (a moment to act on a signal is fair; more is an orphan)."""
        deadline = time.monotonic() + within
        while True:
            survivors = {info.pid: info for info in self.children_at_kill if info.alive()}
            survivors.update({info.pid: info for info in self.session_members() if info.pid != self.pid})
            if not survivors or time.monotonic() >= deadline:
                return list(survivors.values())
            time.sleep(0.05)

    def session_members(self) -> list[ProcessInfo]:
        """The living processes of faber's session: its own while it runs, and those it left."""
        return session_members(self.pid, started_by=None if self.running() else self.ended_at)

    def stop_everything(self) -> None:
        """Kill faber and every process it left behind (cleanup after a test, pass or fail)."""
        if self.running():
            self.proc.kill()
            self.wait(None)
        for info in [*self.children_at_kill, *self.session_members()]:
            if info.alive():
                try:
                    os.kill(info.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.release_file is not None:
            self.release_file.unlink(missing_ok=True)


def deploy_with_application_write(
    project: Path, environment: str, migration: str, write: Callable[[], Any] | None
) -> tuple[int, dict[str, Any]]:
    """``faber migrate ENVIRONMENT --yes --json`` on ``project``, calling ``write`` (the application
    writing, or None) once ``migration`` started; the exit code and the JSON document.

    For tests of what an automatic restore may discard: make ``migration`` last a moment (a
    ``pg_sleep``), so the write lands after the backup and before the restore's check.
    """
    run = FaberProcess.start(project, "migrate", environment, "--yes", "--json")
    try:
        run.wait_for(event_matcher("migration.started", name=migration))
        if write is not None:
            write()
        code = run.finish()
    finally:
        run.stop_everything()
    assert run.stdout(), f"faber printed no document (exit {code}): {run.stderr()[-3000:]}"
    return code, json.loads(run.stdout())


def _read_all(handle: Any) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read().decode(errors="replace")


# A connection lost at the worst moment -------------------------------------------------


class AnswerDropped:
    """A TCP proxy to a database server that loses one session's connection at the worst moment:
    the first ``request`` of a session whose startup holds every one of ``startup`` reaches the
    server, the server runs it and answers, and the proxy closes that session's connection
    instead of passing the answer on. The client cannot tell whether it ran; it did. Build one
    with :meth:`postgres_commit` or :meth:`mysql_statement`.

    Connect through it with :meth:`url` (no TLS: the proxy reads the messages); :attr:`dropped`
    is set once it has dropped the answer. Every other session passes through.
    """

    def __init__(self, upstream_port: int, startup: list[bytes], request: bytes) -> None:
        self.upstream_port = upstream_port
        self.startup = startup
        self.request = request
        self.dropped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def postgres_commit(cls, url: str, application: str, database: str | None = None) -> AnswerDropped:
        """The first ``COMMIT`` (as psycopg sends one) of a session named ``application`` connecting
        to ``database`` (any, if None), on the PostgreSQL server of ``url``."""
        startup = [f"application_name\0{application}".encode()]
        if database is not None:
            startup.append(f"database\0{database}\0".encode())
        return cls(urlsplit(url).port or 5432, startup, b"Q\x00\x00\x00\x0bCOMMIT\x00")

    @classmethod
    def mysql_statement(cls, url: str, program: str, statement_start: str) -> AnswerDropped:
        """The first statement beginning with ``statement_start`` of a session whose program name
        (faber's ``application_name``) is ``program``, on the MySQL/MariaDB server of ``url``."""
        startup = [b"program_name" + bytes([len(program)]) + program.encode()]
        return cls(urlsplit(url).port or 3306, startup, b"\x03" + statement_start.encode())

    def url(self, url: str) -> str:
        """``url`` through the proxy."""
        parts = urlsplit(url)
        netloc = f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{self.listener.getsockname()[1]}"
        query = "sslmode=disable" if parts.scheme.startswith("postgres") else parts.query
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            session = {"named": False, "committing": False}
            threading.Thread(target=self._pump, args=(client, server, session, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, session, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, session: dict[str, bool], to_server: bool) -> None:
        try:
            while data := source.recv(65536):
                if to_server:
                    session["named"] = session["named"] or all(part in data for part in self.startup)
                    if session["named"] and not self.dropped.is_set() and self.request in data:
                        session["committing"] = True
                elif session["committing"] and not self.dropped.is_set():
                    self.dropped.set()  # the server's answer: it ran the request
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()


# Migrations that hold still or fail on demand ---------------------------------------------

HOLD_SECONDS = 60
"""How long a held migration sleeps unless ``faults.hold_seconds`` says otherwise."""


def holdable_migration(name: str, body: str) -> str:
    """SQL for migration ``name``: ``body``, then a sleep while the session's ``faults.hold`` names
    it (for ``faults.hold_seconds``, default :data:`HOLD_SECONDS`), then an error when
    ``faults.fail`` names it. With neither set it is just ``body``.

    Set them for every session of a database (``ALTER DATABASE ... SET faults.hold = '...'``) or
    for one faber process (``PGOPTIONS='-c faults.hold=...'``, see :func:`session_settings`). The
    first line, ``-- faults:NAME``, lets a test find the migration's session in pg_stat_activity.
    """
    return (
        f"-- faults:{name}\n{body}\n"
        f"SELECT pg_sleep(CASE current_setting('faults.hold', true) WHEN '{name}' THEN "
        f"coalesce(nullif(current_setting('faults.hold_seconds', true), ''), '{HOLD_SECONDS}')::float8 "
        "ELSE 0 END);\n"
        f"DO $$ BEGIN IF current_setting('faults.fail', true) = '{name}' THEN "
        f"RAISE EXCEPTION 'injected failure in {name}'; END IF; END $$;\n"
    )


def session_settings(**settings: str | float) -> dict[str, str]:
    """``PGOPTIONS`` giving every session of one faber process ``faults.<key>`` settings."""
    return {"PGOPTIONS": " ".join(f"-c faults.{key}={value}" for key, value in settings.items())}


def migration_session(conn: psycopg.Connection, database: str, name: str) -> int | None:
    """The pid of the session running (and held in) migration ``name`` on ``database``, if any."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' AND wait_event = 'PgSleep'"
        " AND query LIKE %s LIMIT 1",
        [database, f"-- faults:{name}%"],
    ).fetchone()
    return row[0] if row else None


# Counting what a suite covered -------------------------------------------------------------

INJECTIONS = pytest.StashKey[list]()


def record_injection(config: pytest.Config, point: str, signal_name: str, *, passed: bool) -> None:
    """Note a kill that landed at ``point``; the session's summary counts them
    (``pytest_terminal_summary`` in :mod:`faber_core.testing.fixtures`)."""
    config.stash.setdefault(INJECTIONS, []).append((point, signal_name, passed))


def injection_summary(config: pytest.Config) -> str | None:
    kills = config.stash.get(INJECTIONS, [])
    if not kills:
        return None
    points = {point for point, _, _ in kills}
    by_signal = ", ".join(
        f"{name} {sum(1 for _, s, _ in kills if s == name)}" for name in sorted({s for _, s, _ in kills})
    )
    passed = sum(1 for *_, ok in kills if ok)
    return (
        f"fault injection: {len(points)} injection points covered by {len(kills)} kills ({by_signal}); "
        f"{passed} of them left a consistent, recoverable database and nothing behind"
    )


# Database state -------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseState:
    """A database's logical state, comparable with ``==``; :meth:`differences` says how two differ."""

    schema: str
    constraints: tuple[tuple[str, str, str], ...]
    indexes: tuple[tuple[str, str, bool], ...]
    row_counts: tuple[tuple[str, int], ...]

    def differences(self, other: DatabaseState) -> list[str]:
        found = []
        if self.schema != other.schema:
            mine, theirs = set(self.schema.splitlines()), set(other.schema.splitlines())
            only_mine = sorted(mine - theirs)[:8]
            only_theirs = sorted(theirs - mine)[:8]
            found.append(f"schema differs: only here {only_mine}, only there {only_theirs}")
        for name, mine, theirs in (
            ("constraints", self.constraints, other.constraints),
            ("indexes", self.indexes, other.indexes),
            ("row counts", self.row_counts, other.row_counts),
        ):
            if mine != theirs:
                found.append(
                    f"{name} differ: only here {sorted(set(mine) - set(theirs))}, "
                    f"only there {sorted(set(theirs) - set(mine))}"
                )
        return found


_USER_RELATIONS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> ALL(%(excluded)s)
    AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
"""


def snapshot(url: str, *, exclude_schemas: Iterable[str] = ("faber",)) -> DatabaseState:
    """The logical state of the database at ``url`` (PostgreSQL or MySQL/MariaDB), without faber's
    own tables and the excluded schemas: its schema as the engine dumps it for verification
    (``engine.schema_dump``), and the row count of every table; on PostgreSQL also every
    constraint and index with its validity (a failed concurrent build leaves an invalid one)."""
    excluded = list(exclude_schemas)
    database = Database(Secret(url), source="the snapshot's URL")
    schema = database.engine.schema_dump(database, exclude_schemas=excluded)
    if database.engine.name == "mysql":
        with database.connect(application_name="faber snapshot") as conn:
            return DatabaseState(schema, (), (), _mysql_row_counts(conn))
    with psycopg.connect(url, autocommit=True) as conn:
        constraints = conn.execute(
            f"""
            SELECT n.nspname || '.' || c.relname, k.conname, pg_get_constraintdef(k.oid)
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {_USER_RELATIONS} ORDER BY 1, 2
            """,
            {"excluded": excluded},
        ).fetchall()
        indexes = conn.execute(
            f"""
            SELECT n.nspname || '.' || t.relname, i.relname, x.indisvalid
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
            JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE {_USER_RELATIONS} ORDER BY 1, 2
            """,
            {"excluded": excluded},
        ).fetchall()
        tables = conn.execute(
            f"""
            SELECT format('%%I.%%I', n.nspname, c.relname), n.nspname || '.' || c.relname
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND {_USER_RELATIONS} ORDER BY 2
            """,
            {"excluded": excluded},
        ).fetchall()
        counts = tuple((name, conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]) for quoted, name in tables)
    return DatabaseState(schema, tuple(constraints), tuple(indexes), counts)


def _mysql_row_counts(conn: Any) -> tuple[tuple[str, int], ...]:
    """Every application table's exact row count (``information_schema`` has InnoDB's estimate)."""
    from faber_core.backup.mysql_dumps import quote
    from faber_core.backup.mysqldump import FABER_TABLES

    tables = conn.execute(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME NOT IN %s ORDER BY BINARY TABLE_NAME",
        [FABER_TABLES],
    ).fetchall()
    return tuple((name, conn.execute(f"SELECT COUNT(*) FROM {quote(name)}").fetchone()[0]) for (name,) in tables)


def matching_state(state: DatabaseState, candidates: dict[str, DatabaseState]) -> str | None:
    """The name of the candidate ``state`` equals, if any."""
    return next((name for name, candidate in candidates.items() if candidate == state), None)


def closest_differences(state: DatabaseState, candidates: dict[str, DatabaseState]) -> str:
    """How ``state`` differs from each candidate, for a failure message."""
    return "\n".join(f"  vs {name}: {'; '.join(state.differences(c))}" for name, c in candidates.items())


# Server leftovers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftovers:
    sessions: list[tuple]
    advisory_locks: list[tuple]

    def __bool__(self) -> bool:
        return bool(self.sessions or self.advisory_locks)

    def __str__(self) -> str:
        return f"sessions {self.sessions}, advisory locks {self.advisory_locks}"


WAITING_ON_ADVISORY_LOCK = (
    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
"""A query with one parameter, an advisory lock's key: a row while a session of the current
database waits for that lock (a migration the test holds there, until it releases the lock)."""


class HeldMigration:
    """A migration that waits on :attr:`hold_statement` (SQL to put in it), a lock of this test's
    own, on PostgreSQL or MySQL/MariaDB, until the test lets it go."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.mysql = url.startswith(("mysql", "mariadb"))
        # Unique to the run: a MySQL lock is the whole server's, which other tests share.
        self.hold = f"faber-test-hold-{uuid.uuid4().hex[:12]}"
        self.key = int.from_bytes(uuid.uuid4().bytes[:4], "big") >> 1

    @property
    def hold_statement(self) -> str:
        if self.mysql:
            return f"SELECT GET_LOCK('{self.hold}', 60)"
        return f"SELECT pg_advisory_xact_lock({self.key})"

    def connect(self) -> Any:
        """A session of the test's own: on PostgreSQL named as faber's, so a restore neither waits
        for its write counters nor ends it."""
        from faber_core.testing.fixtures import TEST_SESSION, mysql_connect

        if self.mysql:
            return mysql_connect(self.url)
        return psycopg.connect(self.url, autocommit=True, application_name=TEST_SESSION)

    def query(self, statement: str) -> list[tuple]:
        """``statement``'s rows, on a connection of its own (an idle one would hold a restore's
        check of the rows written since its backup back, see docs/workflow.md)."""
        with self.connect() as conn:
            cursor = conn.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    def take(self, conn: Any) -> None:
        """Take the lock the migration waits for on ``conn`` (released as it closes)."""
        if self.mysql:
            assert conn.execute("SELECT GET_LOCK(%s, 0)", [self.hold]).fetchone()[0] == 1
        else:
            conn.execute("SELECT pg_advisory_lock(%s)", [self.key])

    def release(self, conn: Any) -> None:
        """Let the held migration go on: release the lock :meth:`take` took on ``conn``."""
        if self.mysql:
            conn.execute("SELECT RELEASE_LOCK(%s)", [self.hold])
        else:
            conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])

    def deploy_stopped_inside(
        self,
        project_dir: Path,
        signum: int,
        *,
        meanwhile: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[FaberProcess, int]:
        """``faber migrate staging --yes --json`` from ``project_dir``, sent ``signum`` once the held
        migration waits (its first statement, :attr:`copy_statement`, committed), after
        ``meanwhile()`` ran at that moment; the process and how it ended (``Popen.returncode``)."""
        with self.connect() as holder:
            self.take(holder)
            run = FaberProcess.start(project_dir, "migrate", "staging", "--yes", "--json", env=env)
            try:
                run.wait_until(lambda: self.waiting(holder), what="the migration to wait", timeout=60)
                if meanwhile is not None:
                    meanwhile()
                # Still inside it: a lock timeout of the environment's could have ended the wait,
                # and the signal would land in whatever the run does next (its rollback, say).
                assert self.waiting(holder), f"the migration no longer waits; events: {run.kinds()}"
                run.kill(signum)
                code = run.wait(60)
            finally:
                run.stop_everything()
        return run, code

    def waiting(self, conn: Any) -> bool:
        """Whether another session (the migration's) waits on the hold ``conn`` took."""
        if self.mysql:
            statement = f"SELECT GET_LOCK('{self.hold}'%"
            query = "SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()"
            return bool(conn.execute(query, [statement]).fetchone())
        return bool(conn.execute(WAITING_ON_ADVISORY_LOCK, [self.key]).fetchone())


class LockTakenMidDeploy(HeldMigration):
    """A deploy that loses faber's lock while its first pending migration runs, and another run
    that takes the lock then, as ``pg_terminate_backend``, ``KILL`` or a proxy's timeout and a
    second deploy would. The migration waits on :attr:`hold_statement` until the lock is taken;
    :meth:`run` deploys and returns faber's document."""

    def run(self, project_dir: Path, environment: str = "staging") -> tuple[int, dict, FaberProcess]:
        """``(exit code, JSON document, process)`` of ``faber migrate ENV --yes --json`` from
        ``project_dir``, its lock taken while the held migration waits."""
        with self.connect() as other_deploy:
            self.take(other_deploy)
            run = FaberProcess.start(project_dir, "migrate", environment, "--yes", "--json")
            try:
                run.wait_until(lambda: self.waiting(other_deploy), what="the first migration held")
                self._take_faber_lock(run, other_deploy)
                self.release(other_deploy)
                code = run.wait(60)
            finally:
                run.stop_everything()
        return code, json.loads(run.stdout()), run

    def _take_faber_lock(self, run: FaberProcess, conn: Any) -> None:
        """End the session holding ``run``'s lock and take the lock on ``conn`` until it closes."""
        end_faber_lock_session(conn)
        if self.mysql:
            from faber_core.support.mysql import faber_lock_name_on_server

            name = faber_lock_name_on_server(conn)
            take = "SELECT GET_LOCK(%s, 0) = 1"
        else:
            name = session_lock_key(conn)
            take = "SELECT pg_try_advisory_lock(%s)"
        # The session was only told to end: the lock is free once it has.
        run.wait_until(lambda: conn.execute(take, [name]).fetchone()[0], what="faber's lock taken by another run")


def end_faber_lock_session(conn: Any, *, run_id: str | None = None) -> None:
    """End, from ``conn`` (a session of the database, autocommit), the session holding faber's lock,
    and with ``run_id`` the one holding that run's own lock too (:mod:`faber_core.audit.run_lock`),
    in one go: as an operator ending faber's sessions, an idle-session timeout or a proxy would
    (``pg_terminate_backend`` on PostgreSQL, ``KILL`` on MySQL/MariaDB). Asserts that each lock is
    held. The server is only told to end them: a lock they held is free once they have ended."""
    from faber_core.audit.run_lock import run_lock_key, run_lock_name

    if not isinstance(conn, psycopg.Connection):
        from faber_core.support.mysql import faber_lock_name_on_server

        names = [faber_lock_name_on_server(conn), *([run_lock_name(run_id)] if run_id else [])]
        holders = [conn.execute("SELECT IS_USED_LOCK(%s)", [name]).fetchone()[0] for name in names]
        assert None not in holders, f"not every lock of {names} is held: {holders}"
        for holder in holders:
            conn.execute(f"KILL {int(holder)}")
        return
    keys = [session_lock_key(conn), *([run_lock_key(run_id)] if run_id else [])]
    ended = conn.execute(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l, unnest(%s::bigint[]) k"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.classid = ((k >> 32) & 4294967295)::oid AND l.objid = (k & 4294967295)::oid"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [keys],
    ).fetchall()
    assert len(ended) == len(keys), f"not every lock of {keys} is held"


class KilledInsideAMigration(HeldMigration):
    """A deploy killed (SIGKILL) inside a migration that runs outside a transaction, once the
    migration's first statement, :attr:`copy_statement` (which copies a ledger's ten rows),
    committed; and what the next runs say of it (docs/workflow.md#interrupts). The migration runs
    :attr:`copy_statement`, any statements of the test's, then :attr:`hold_statement`."""

    copy_statement = "INSERT INTO ledger SELECT id + 100 FROM ledger"

    def create_ledger(self) -> None:
        """The ledger's ten rows, which :attr:`copy_statement` copies."""
        self.query("CREATE TABLE ledger (id int)")
        self.query("INSERT INTO ledger VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)")

    def ledger(self) -> int:
        return self.query("SELECT count(*) FROM ledger")[0][0]

    def check(
        self, project_dir: Path, migration: str, run_faber: Callable[..., Any], recovery: str, undo: Iterable[str] = ()
    ) -> None:
        """Deploy ``migration`` (pending in ``project_dir``'s ``staging``, which takes a backup) and
        kill it inside; ``faber status`` meanwhile sees nothing failed, and afterwards both it and
        the next ``faber migrate`` name the migration as left by a killed run, with the restore that
        undoes it. ``recovery``: ``restore`` (that backup) or ``resolve`` (``undo`` and the copy
        undone by hand, then ``faber resolve --rolled-back``); then the migration deploys."""

        def faber(*args: str) -> Any:
            return run_faber(*args, "--cwd", str(project_dir))

        def nothing_failed_meanwhile() -> None:
            meanwhile = faber("status", "staging", "--json")  # a deploy under way: nothing failed
            assert meanwhile.returncode == 0, meanwhile.output
            assert json.loads(meanwhile.stdout)["result"]["failed"] == []

        self.create_ledger()
        run, code = self.deploy_stopped_inside(project_dir, signal.SIGKILL, meanwhile=nothing_failed_meanwhile)
        assert code == -signal.SIGKILL
        backup_id = run.wait_for("backup.created")["data"]["backup_id"]
        assert self.ledger() == 20  # the copy committed

        status = faber("status", "staging", "--json")
        again = faber("migrate", "staging", "--yes", "--json")
        for told, code in ((status, 6), (again, 3)):
            assert told.returncode == code, told.output
            document = json.loads(told.stdout)
            assert f"{migration} (a faber migrate was killed inside it, or it failed" in told.stdout
            assert f"faber rollback staging --to {backup_id}" in " ".join(document["recovery"]["suggestions"])
        assert json.loads(status.stdout)["result"]["failed"] == [migration]
        assert json.loads(again.stdout)["code"] == "HEALTH_CHECK_FAILED"
        assert self.ledger() == 20  # not run again

        if recovery == "restore":
            undone = faber("rollback", "staging", "--to", backup_id, "--yes", "--discard-app-writes", "--json")
        else:
            for statement in [*undo, "DELETE FROM ledger WHERE id > 100"]:
                self.query(statement)
            undone = faber("resolve", "staging", "--rolled-back", migration, "--json")
        assert undone.returncode == 0, undone.output
        if recovery == "restore" and not self.mysql:
            # The copy is the killed run's, which recorded none of its writes: not the application's
            # for sure (MySQL counts no writes at all).
            since = json.loads(undone.stdout)["result"]["writes_since_backup"]
            assert since["attribution"] == "unknown", since
        assert self.ledger() == 10
        deployed = faber("migrate", "staging", "--yes", "--json")
        assert deployed.returncode == 0, deployed.output
        assert self.ledger() == 20

    @property
    def record_table(self) -> str:
        """faber's record of the migrations a deploy left pending (``faber_unfinished_migrations``)."""
        return "faber_unfinished_migrations" if self.mysql else "faber.faber_unfinished_migrations"

    def resolve_applied_killed_once_the_tool_recorded(
        self, project_dir: Path, migration: str, tool_recorded: Callable[[], bool]
    ) -> None:
        """``faber resolve staging --applied migration`` from ``project_dir``, killed (SIGKILL) once
        the tool's record says it ran (``tool_recorded()``) while faber's removal of its own record
        of ``migration`` waits: held on the row (PostgreSQL) or by a trigger on it (MySQL/MariaDB,
        whose DELETE of the other rows may lock every row it scans). Then faber's record names
        ``migration`` alone."""
        with self.connect() as holder:
            if self.mysql:
                hold = f"{self.hold}-record"
                assert holder.execute("SELECT GET_LOCK(%s, 0)", [hold]).fetchone()[0] == 1
                # MariaDB ends the wait of a client that died at once, and the DELETE would then
                # commit: the trigger fails it whatever ends the wait, as the killed removal would.
                self.query(
                    f"CREATE TRIGGER hold_removal BEFORE DELETE ON {self.record_table} FOR EACH ROW"
                    f" IF OLD.migration = '{migration}' THEN SET @held = GET_LOCK('{hold}', 60);"
                    " SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the removal the test held'; END IF"
                )
                waiting = (
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SET @held = GET_LOCK%'"
                    " AND DB = DATABASE() AND ID <> CONNECTION_ID()"
                )
            else:
                holder.execute("BEGIN")
                holder.execute(f"SELECT 1 FROM {self.record_table} WHERE migration = %s FOR UPDATE", [migration])
                waiting = (
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    " AND query LIKE 'DELETE FROM%faber_unfinished_migrations%position >=%'"
                )
            run = FaberProcess.start(project_dir, "resolve", "staging", "--applied", migration, "--json")
            try:
                run.wait_until(lambda: self.query(waiting), what="faber's record's removal to wait")
                assert tool_recorded(), f"the tool has not recorded {migration} while faber's removal waits"
                run.kill(signal.SIGKILL)
                assert run.wait(10) == -signal.SIGKILL
            finally:
                run.stop_everything()
            if not self.mysql:
                # The dead client's backend, ended rather than left to remove the row once the test
                # lets go: PostgreSQL does not notice a dead client while it waits on a row.
                for (backend,) in self.query(waiting):
                    self.query(f"SELECT pg_terminate_backend({int(backend)})")
        if self.mysql:
            self.query("DROP TRIGGER hold_removal")
        record = self.query(f"SELECT migration FROM {self.record_table}")
        assert record == [(migration,)], record

    @contextlib.contextmanager
    def lock_session_ended_inside(
        self, project_dir: Path, other_project: Path, *, with_run_lock: bool = False
    ) -> Iterator[tuple[FaberProcess, FaberProcess]]:
        """``faber migrate staging`` from ``project_dir`` held inside its migration; a second one
        from ``other_project`` (the same database) waiting for faber's lock; then the first run's
        session holding faber's lock ended (``with_run_lock``: the session holding its own run lock
        too, at once), as an operator, an idle timeout or a proxy would. Yields ``(first,
        second)`` once the second has ended, the first still held; then lets the first go on and
        waits for it."""
        from faber_core.audit import run_lock

        with self.connect() as holder:
            self.take(holder)
            first = FaberProcess.start(project_dir, "migrate", "staging", "--yes", "--json")
            second = None
            try:
                run_id = first.wait_for("run.started")["run_id"]
                first.wait_until(lambda: self.waiting(holder), what="the migration to wait", timeout=60)
                second = FaberProcess.start(other_project, "migrate", "staging", "--yes", "--json")
                second.wait_for(event_matcher("step.started", step="lock"))
                if with_run_lock:
                    first.wait_until(lambda: run_lock.held(holder, [run_id], mysql=self.mysql), what="its run lock")
                end_faber_lock_session(holder, run_id=run_id if with_run_lock else None)
                second.finish(120)
                yield first, second
                self.release(holder)
                first.finish(120)
            finally:
                first.stop_everything()
                if second is not None:
                    second.stop_everything()

    def next_runs_see_it_applied(self, run_faber: Callable[..., Any], project_dir: Path, later: str) -> None:
        """After ``faber resolve --applied`` of the migration the deploy was killed in: the status
        names no migration failed, and the next deploy applies ``later`` alone, copying nothing again."""
        status = run_faber("status", "staging", "--json", "--cwd", str(project_dir))
        deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project_dir))
        assert status.returncode == 0, status.output
        assert json.loads(status.stdout)["result"]["failed"] == [], status.output
        assert deployed.returncode == 0, deployed.output
        assert [m["name"] for m in deployed.json["result"]["migrations"]] == [later]
        assert self.ledger() == 20  # not copied again

    def interrupted(self, project_dir: Path, signum: int) -> dict:
        """The document of ``faber migrate staging --yes --json`` from ``project_dir`` stopped by
        ``signum`` once the held migration waits, its first statement (:attr:`copy_statement`) committed."""
        self.create_ledger()
        run, code = self.deploy_stopped_inside(project_dir, signum)
        assert code == 130, run.stderr()
        assert "Traceback" not in run.stderr(), run.stderr()
        assert self.ledger() == 20  # the copy committed
        return json.loads(run.stdout())


def server_leftovers(admin_url: str, database: str, *, ignore_pids: Iterable[int] = ()) -> Leftovers:
    """Sessions connected to ``database`` and advisory locks held in it, except ``ignore_pids``."""
    ignored = list(ignore_pids)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        sessions = conn.execute(
            """
            SELECT pid, application_name, state, wait_event_type, left(query, 120)
            FROM pg_stat_activity
            WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> ALL(%s) AND backend_type = 'client backend'
            ORDER BY pid
            """,
            [database, ignored],
        ).fetchall()
        locks = conn.execute(
            """
            SELECT l.pid, l.classid, l.objid, l.granted FROM pg_locks l JOIN pg_database d ON d.oid = l.database
            WHERE l.locktype = 'advisory' AND d.datname = %s AND (l.pid IS NULL OR l.pid <> ALL(%s))
            """,
            [database, ignored],
        ).fetchall()
    return Leftovers(sessions, locks)


def application_sessions(url: str, application_name: str) -> list[int]:
    """The server processes of the sessions named ``application_name`` on ``url``'s database
    (``pg_dump`` and its workers, ``pg_restore``'s jobs), to wait until a killed run's are gone."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            [application_name],
        ).fetchall()
    return [pid for (pid,) in rows]


def wait_for_server_release(
    admin_url: str, database: str, *, within: float, ignore_pids: Iterable[int] = ()
) -> Leftovers:
    """What is still on the server after ``within`` seconds (empty as soon as nothing is)."""
    deadline = time.monotonic() + within
    while True:
        found = server_leftovers(admin_url, database, ignore_pids=ignore_pids)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


# MySQL/MariaDB --------------------------------------------------------------------------


def mysql_session(admin_url: str, condition: str, params: list) -> tuple | None:
    """The first session in the server's process list matching ``condition`` (SQL on
    ``information_schema.PROCESSLIST``): its id, database, state and statement."""
    from faber_core.testing.fixtures import mysql_connect

    with mysql_connect(admin_url) as conn:
        return conn.execute(
            f"SELECT ID, DB, STATE, LEFT(INFO, 80) FROM information_schema.PROCESSLIST WHERE {condition} LIMIT 1",
            params,
        ).fetchone()


def mysql_leftovers(admin_url: str, user: str, database: str) -> list[tuple]:
    """The sessions of ``user`` (a test's deploy user), and faber's lock on ``database`` if anyone holds it."""
    from faber_core.support.mysql import faber_lock_name_on_server
    from faber_core.testing.fixtures import mysql_connect

    with mysql_connect(admin_url) as conn:
        sessions = conn.execute(
            "SELECT ID, DB, COMMAND, LEFT(INFO, 80) FROM information_schema.PROCESSLIST WHERE USER = %s", [user]
        ).fetchall()
        holder = conn.execute("SELECT IS_USED_LOCK(%s)", [faber_lock_name_on_server(conn, database)]).fetchone()[0]
    return [*sessions, *([("faber lock held by", holder)] if holder is not None else [])]


def wait_for_mysql_release(admin_url: str, user: str, database: str, *, within: float) -> list[tuple]:
    """What :func:`mysql_leftovers` still finds after ``within`` seconds (empty as soon as nothing).

    While the server cleans up a killed session it can fail the poll itself (MariaDB's
    "Error on delete of …#sql-temptable…"); such an answer counts as "not released yet".
    """
    import pymysql

    deadline = time.monotonic() + within
    while True:
        try:
            found = mysql_leftovers(admin_url, user, database)
        except (pymysql.err.InternalError, pymysql.err.OperationalError) as error:
            found = [("server still cleaning up", str(error))]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)
