"""Restoring a pg_dump archive in place, in one transaction that only faber can commit.

One ``psql`` session runs, in this order::

    BEGIN READ WRITE;
    txid_current()     the transaction's id, read back by faber
    <lock>             every table the restore replaces, ACCESS EXCLUSIVE (lock_replaced_tables),
                       waiting for the transactions holding them to end; psql says when. After
                       LOCK_PATIENCE_SECONDS faber ends the application's sessions that still
                       block it (it ends them all once locked anyway); sessions it does not end
                       that block it past LOCK_WAIT_SECONDS stop the restore, nothing changed
    <writes again>     faber, on a session of its own: end the application's sessions (each
                       reports its counts as it ends), check the rows written since the backup
                       again (context.restore_replacing); under restore_with_app_writes refuse,
                       rows committed since faber's first check stop the restore here: rolled back
    <prelude>          drop what the archive brings back: event triggers, subscriptions,
                       publications, large objects, foreign servers, user casts, every schema
                       but faber's own (:func:`~faber_core.backup.store.faber_schemas`), then the
                       remaining extensions; recreate ``public``; put back the database's own
                       settings, comment, grants and connection limit that the backup recorded
                       and faber's user may change (:mod:`~faber_core.backup.database_properties`)
    <pg_restore -1>    the archive as SQL, minus its final COMMIT and faber's schemas
                       (:func:`restore_list`)
    <lock check>       faber's lock still held by faber's lock session
                       (``context.restore_committing``): fails otherwise, so nothing commits
    COMMIT;
    ANALYZE            every restored table, so the planner has statistics at once

The COMMIT is sent only after ``pg_restore`` exited 0 and its script ended as expected, and runs
only if the lock check before it passed in the same transaction: once faber's lock session is
ended (an operator, a proxy timeout), another run may take the lock, so the restore rolls back and
raises :class:`~faber_core.errors.LockLost`, the database exactly as before. If faber
is killed (SIGKILL included: its children die with it, see :mod:`faber_core.processes`),
interrupted, or anything fails, ``psql`` reaches the end of its input, or dies, inside the open
transaction, and the server rolls everything back: the database is exactly as before the
restore. ``psql --single-transaction`` would not do: it commits whatever it read when its input
ends early.

An interrupt (SIGINT, SIGTERM) can also arrive once the COMMIT is on its way or done (during the
ANALYZE). So after stopping ``psql`` and ending its session, faber asks the server what became of
the transaction (``txid_status``) and returns an interrupted :class:`RestoreOutcome` saying
whether it committed: the database is then exactly the backup, or exactly as before. One that
arrives once ``psql`` ended after the COMMIT (``backup.restore_step`` ``committed`` emitted, the
scratch list being removed) says it committed.

Sessions carry ``client_connection_check_interval`` so the server notices a dead ``psql`` within
seconds, even mid-statement; on an interrupt faber also terminates the session itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from faber_core import events
from faber_core.backup import store, writes
from faber_core.backup.writes import IS_A_FABER_SCHEMA
from faber_core.context import LockCheck, RunContext
from faber_core.engines import LOCK_LOST
from faber_core.errors import RestoreFailed
from faber_core.models import BackupRecord, RestoreOutcome
from faber_core.processes import child_environment, how_it_ended, spawn, stop, supervised
from faber_core.support.scratch_folders import scratch_folder

CHUNK = 1 << 20
_TAIL_BYTES = 1 << 16
# What pg_restore --single-transaction prints last: COMMIT, then comments and (15.14+) \unrestrict.
_FINAL_COMMIT = re.compile(rb"(?:^|\n)COMMIT;\n((?:\n|--[^\n]*\n|\\unrestrict [^\n]*\n)*)\Z")
PROGRESS_INTERVAL_SECONDS = 5.0
COMMIT_CHECK_SECONDS = 10.0
"""How long to wait for the server to end an abandoned restore's session before asking whether it committed."""
LOCK_PATIENCE_SECONDS = 2.0
"""How long the restore's lock waits for the application's transactions on the restored tables to
end by themselves. Every later query on those tables queues behind the waiting lock, so past this
faber ends the application's sessions that block it, as it ends them all once it holds the lock."""
LOCK_WAIT_SECONDS = 30.0
"""How long the restore waits in all for sessions faber does not end (its own, another role's, a
superuser's, a prepared transaction) to release the restored tables; past it the restore stops,
the database unchanged."""
_LOCK_POLL_SECONDS = 0.2

_FOR_EACH_RESTORED_TABLE = """
DO $faber$
DECLARE relation regclass;
BEGIN
  FOR relation IN
    SELECT c.oid::regclass FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ({kinds}) AND n.nspname NOT IN ({keep}) AND {which}
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
    ORDER BY c.oid
  LOOP
    EXECUTE pg_catalog.format({statement}, relation);
  END LOOP;
END
$faber$;
"""
"""Run ``statement`` (a format string, ``%s`` the table) on each table outside the kept schemas."""


@dataclass(frozen=True)
class _Statements:
    """The SQL faber writes around pg_restore's script, in the order it runs."""

    lock: str
    """:func:`lock_replaced_tables`, right after the restore's transaction began."""
    prelude: str
    """:func:`restore_prelude` and the database's own properties, before pg_restore's script."""
    finish: str
    """:func:`analyze_restored`, after the COMMIT."""


class _ScriptProblem(Exception):
    """The restore's script could not go on (psql ended, pg_restore's script did not end as
    expected); nothing is committed."""


class _LockNotGranted(Exception):
    """Sessions faber does not end held the restored tables past :data:`LOCK_WAIT_SECONDS`."""

    def __init__(self, holders: list[str], waited: float) -> None:
        super().__init__()
        self.holders = holders
        self.waited = waited


def kept_schemas(context: RunContext, backup: BackupRecord) -> list[str]:
    """The schemas a restore of ``backup`` leaves as they are: this project's (:func:`store.faber_schemas`)
    and the faber_schema of every other project deploying the same database, whose history and
    write baselines a restore must not take back to the backup's, or drop when the backup
    predates them."""
    with context.database.connect() as conn:
        return with_other_projects_schemas(conn, store.faber_schemas(context, backup))


def with_other_projects_schemas(conn: psycopg.Connection, keep: list[str]) -> list[str]:
    """``keep`` and the faber_schema of every other project deploying the database."""
    others = conn.execute(
        f"SELECT n.nspname FROM pg_catalog.pg_namespace n WHERE n.nspname <> ALL(%s) AND {IS_A_FABER_SCHEMA}"
        " ORDER BY 1",
        [keep],
    ).fetchall()
    return keep + [name for (name,) in others]


def restore_archive(context: RunContext, backup: BackupRecord, tools: Path, major: int) -> RestoreOutcome:
    # Imported by a restore only: a status imports this module through the swap restore's.
    from faber_core.backup import database_properties

    archive = context.project_dir / (backup.location or "")
    manual = [
        f"The restore changed nothing; restore by hand with: pg_restore --clean --if-exists -d <database> {archive}",
        "Connection settings for pg_restore come from PGHOST/PGUSER/PGPASSWORD/PGDATABASE",
    ]
    if not store.archive_present(archive):
        raise RestoreFailed(f"Backup archive {backup.location} is missing", suggestions=manual[1:])
    # Stopped before the restore's transaction began (reading which schemas to keep, checking the
    # archive, reading what to restore), nothing was changed; stopped once it committed (removing
    # the scratch list, closing the archive), the database is the backup: either is said, as a
    # stop inside the transaction is.
    notes: str | None = None
    try:
        with store.reading(archive) as fd:
            keep = kept_schemas(context, backup)
            store.verify_archive(context, backup, fd)
            with context.database.connect() as conn:
                refused = objects_it_may_not_drop(conn, keep)
                if refused:
                    reason, suggestions = in_place_refusal(context, conn.info.user, refused)
                    raise RestoreFailed(f"Not restored: {reason}; the database is unchanged", suggestions=suggestions)
                properties = database_properties.restoring_in_place(context, conn, backup)
                statements = _Statements(
                    lock=lock_replaced_tables(keep).as_string(conn),
                    prelude=restore_prelude(conn, *keep) + properties.script,
                    finish=analyze_restored(keep).as_string(conn),
                )
            with restore_list(context, backup, tools, archive, fd, keep) as listed:
                notes = _run_in_one_transaction(context, backup, tools, major, archive, fd, listed, statements, manual)
                context.emit(events.BACKUP_RESTORE_STEP, step="committed", status="done")
            restored = RestoreOutcome(
                backup_id=backup.id,
                status="success",
                details=f"Restored {backup.id} ({backup.size_bytes} bytes) in one transaction{notes}"
                f"{properties.details()}",
                steps=[
                    "locked the restored tables, ended the application's sessions and checked the rows written "
                    "since the backup again",
                    "dropped what changed since the backup (schemas, large objects, publications, subscriptions, "
                    "event triggers, extensions)",
                    "put back the database's own settings, comment, grants and connection limit that changed",
                    "replayed the archive",
                    "committed",
                    "analyzed the restored tables",
                ],
                provider_data=properties.provider_data(),
            )
    except KeyboardInterrupt as interrupt:
        if notes is None:
            return stopped_before_it_began(backup, interrupt)
        return _stopped_in_or_after_the_transaction(backup, interrupt, True, properties.provider_data())
    except _Interrupted as stopped:
        return _stopped_in_or_after_the_transaction(
            backup, stopped.interrupt, stopped.committed, properties.provider_data()
        )
    return restored


def stopped_before_it_began(backup: BackupRecord, interrupt: KeyboardInterrupt) -> RestoreOutcome:
    """The outcome of a restore a signal stopped before it changed anything."""
    return RestoreOutcome.interrupted(
        backup.id,
        interrupt,
        committed=False,
        details=f"The restore of {backup.id} was stopped before it began: the database is exactly as before it",
    )


def _stopped_in_or_after_the_transaction(
    backup: BackupRecord, interrupt: KeyboardInterrupt, committed: bool | None, provider_data: dict[str, Any]
) -> RestoreOutcome:
    """The outcome of a restore a signal stopped once its transaction began: ``committed`` as the
    server said of it (None: it could not be asked)."""
    return RestoreOutcome.interrupted(
        backup.id,
        interrupt,
        committed=committed,
        details={
            True: f"The restore of {backup.id} had committed: the database is exactly the backup",
            False: f"The restore of {backup.id} had not committed and was rolled back: the database is "
            "exactly as before it",
            None: f"Could not ask the server whether the restore of {backup.id} committed",
        }[committed],
        provider_data=provider_data,
    )


@contextlib.contextmanager
def restore_list(
    context: RunContext, backup: BackupRecord, tools: Path, archive: Path, archive_fd: int, faber_schemas: list[str]
) -> Iterator[Path]:
    """A ``pg_restore --use-list`` file naming every entry of the archive but faber's schemas,
    for the block: both restore modes restore only what it lists.

    A restore keeps faber's schemas as they are in the database (they hold its history since),
    so it must not take them from the archive either: one the backup did not leave out, the
    schema in use again after ``faber_schema`` was renamed and renamed back, is an older copy, and
    its ``CREATE SCHEMA`` would fail on the one kept. ``pg_restore --list --exclude-schema`` leaves
    out what is in those schemas; the schemas themselves, and their comments, grants and security
    labels, belong to no schema and are taken out of the list here.

    ``--exclude-schema`` makes the listing selective, which also leaves out every comment, grant
    and security label whose object the archive does not create (the schema ``public``'s, a
    built-in function's, an extension's function's): the full listing's such entries outside
    faber's schemas are listed back. A file archive is read through ``archive_fd``, the
    descriptor that was verified, which is rewound after each listing."""
    everything = _listing(context, backup, tools, archive, archive_fd, [])
    selected = {_entry_id(line) for line in _listing(context, backup, tools, archive, archive_fd, faber_schemas)}
    kept = {name.encode() for name in faber_schemas}
    listed_lines = [
        line
        for line in everything
        if _entry_id(line) is not None
        and (_entry_id(line) in selected or _described_outside(line, kept))
        and _entry_schema(line) not in kept
    ]
    # Written before anything changes: a full temporary disk there leaves the database unchanged.
    with contextlib.ExitStack() as scratch:
        try:
            listed = scratch.enter_context(scratch_folder("faber-restore-")) / "restore.list"
            listed.write_bytes(b"".join(listed_lines))
        except OSError as exc:
            raise _list_not_written(context, backup, exc) from None
        yield listed


def _list_not_written(context: RunContext, backup: BackupRecord, exc: OSError) -> RestoreFailed:
    """The restore's list could not be written (a full disk, a file-size limit, a read-only TMPDIR)."""
    folder = tempfile.gettempdir()
    return RestoreFailed(
        f"Cannot write the restore's list of entries under {folder}: {exc.strerror or exc}; the database is unchanged",
        suggestions=[
            f"Free disk space under {folder} (or set TMPDIR to a folder with room), then run again: "
            f"faber rollback {context.environment} --to {backup.id}"
        ],
    )


def _listing(
    context: RunContext, backup: BackupRecord, tools: Path, archive: Path, archive_fd: int, excluded: list[str]
) -> list[bytes]:
    """The lines of ``pg_restore --list`` of the archive, without what is in the schemas ``excluded``."""
    directory = archive.is_dir()
    lister = spawn(
        [
            tools / "pg_restore",
            "--list",
            *(f"--exclude-schema={name}" for name in excluded),
            *([archive] if directory else []),
        ],
        env=child_environment({}),
        stdin=subprocess.DEVNULL if directory else archive_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with supervised(lister):
        listing, errors = lister.communicate()
    if not directory:
        os.lseek(archive_fd, 0, os.SEEK_SET)
    if lister.returncode != 0:
        said = first_error(errors.decode(errors="replace")) or how_it_ended(lister.returncode)
        detail = context.redactor.redact(said)
        raise RestoreFailed(
            f"Restore of {backup.id} failed: its archive's contents could not be listed: {detail}; the database is "
            "unchanged",
            result={"restore_error": detail},
            backup_id=backup.id,
        )
    return listing.splitlines(True)


_ENTRY_ID = re.compile(rb"(\d+); ")

_DESCRIPTION_ENTRY = re.compile(rb"\d+; \d+ \d+ (?:ACL|COMMENT|SECURITY LABEL) (?P<schema>\S+) ")
"""A line of ``pg_restore --list`` for a grant, comment or security label, with the first word of
the schema of the object it describes (``-`` for an object outside any schema)."""


def _entry_id(line: bytes) -> bytes | None:
    """The dump id of the entry on ``line`` of ``pg_restore --list``; None for a comment line (the
    archive's header), which a list for ``--use-list`` does not need."""
    match = _ENTRY_ID.match(line)
    return None if match is None else match[1]


def _described_outside(line: bytes, faber_schemas: set[bytes]) -> bool:
    """Whether ``line`` of ``pg_restore --list`` is a grant, comment or security label of an object
    outside ``faber_schemas``. An application schema whose name begins with one of faber's and a
    space is taken for faber's: its objects' descriptions that the archive does not create are
    left out, as a selective listing leaves them out."""
    match = _DESCRIPTION_ENTRY.match(line)
    return match is not None and match["schema"] not in faber_schemas


_SCHEMA_ENTRY = re.compile(rb"\d+; \d+ \d+ (?:SCHEMA - (?P<schema>\S+)|[A-Z ]+ - SCHEMA (?P<of>\S+)) \S*\n?")
"""A line of ``pg_restore --list`` for a schema (``SCHEMA - name owner``) or for its comment, grant
or security label (``ACL - SCHEMA name owner``). Names are not quoted there: matched whole, with
one word for the name and one for the owner, a schema ``faber x`` does not pass for ``faber``
(faber's schema names are plain words); one whose owner's name has a space is not taken out, and
the restore fails on it as before, the database unchanged."""


def _entry_schema(line: bytes) -> bytes | None:
    """The schema that ``line`` of ``pg_restore --list`` creates or describes, or None."""
    match = _SCHEMA_ENTRY.fullmatch(line)
    return None if match is None else match["schema"] or match["of"]


def analyze_restored(faber_schemas: list[str]) -> sql.Composed:
    """ANALYZE every restored table, that is every table outside ``faber_schemas``."""
    return _for_each_restored_table(faber_schemas, "'r', 'm', 'p'", "true", "ANALYZE %s")


def lock_replaced_tables(faber_schemas: list[str]) -> sql.Composed:
    """Lock every table the restore replaces that faber's user may lock (UPDATE, DELETE or
    TRUNCATE on it, as ``ACCESS EXCLUSIVE`` requires): from then on nothing else commits to them.
    One it may not lock is locked later by the prelude's ``DROP SCHEMA`` (its schema's owner may
    drop it)."""
    return _for_each_restored_table(
        faber_schemas,
        "'r', 'p'",
        "pg_catalog.has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE')",
        "LOCK TABLE %s IN ACCESS EXCLUSIVE MODE",
    )


def _for_each_restored_table(faber_schemas: list[str], kinds: str, which: str, statement: str) -> sql.Composed:
    return sql.SQL(_FOR_EACH_RESTORED_TABLE).format(
        kinds=sql.SQL(kinds),
        keep=sql.SQL(", ").join(map(sql.Literal, faber_schemas)),
        which=sql.SQL(which),
        statement=sql.Literal(statement),
    )


class _Interrupted(Exception):
    """A signal stopped the restore; ``committed`` is what the server says of its transaction."""

    def __init__(self, interrupt: KeyboardInterrupt, committed: bool | None) -> None:
        super().__init__()
        self.interrupt = interrupt
        self.committed = committed


def _run_in_one_transaction(
    context: RunContext,
    backup: BackupRecord,
    tools: Path,
    major: int,
    archive: Path,
    archive_fd: int,
    listed: Path,
    statements: _Statements,
    manual: list[str],
) -> str:
    """Run the restore of the archive's entries ``listed`` (:func:`restore_list`); returns notes
    for its details (statistics that could not be refreshed).

    A file archive reaches pg_restore through ``archive_fd``, the descriptor faber verified and
    locked, whose offset shows the progress; a directory archive by its path (pg_restore opens
    its files itself), ``archive_fd`` holding its lock."""
    from faber_core.backup.pg_dump import client_env

    application = f"faber restore {context.run_id}"
    # The script's own BEGIN warns that a transaction is open (ours); keep that out of the errors.
    psql_env = client_env(context, major, client_min_messages="error") | {"PGAPPNAME": application}
    directory = archive.is_dir()
    size = None if directory else os.fstat(archive_fd).st_size
    started: list[subprocess.Popen] = []  # psql, then pg_restore
    transaction: int | None = None
    commit_sent = False
    try:
        with tempfile.TemporaryFile() as psql_errors, tempfile.TemporaryFile() as restore_errors:
            psql = spawn(
                [tools / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                env=psql_env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=psql_errors,
            )
            started.append(psql)
            restore = spawn(
                [
                    tools / "pg_restore",
                    "--single-transaction",
                    f"--use-list={listed}",
                    "--file=-",
                    *([archive] if directory else []),
                ],
                env=client_env(context, major),
                stdin=subprocess.DEVNULL if directory else archive_fd,
                stdout=subprocess.PIPE,
                stderr=restore_errors,
            )
            started.append(restore)
            assert psql.stdin and restore.stdout
            problem: str | None = None
            not_granted: _LockNotGranted | None = None
            lock_check: LockCheck | None = None
            try:
                transaction = _begin(psql)
                _lock(context, psql, statements.lock, application)
                # Nothing commits to the restored tables any more: rows committed since faber's
                # check before the restore are counted now, once their sessions reported them.
                context.restore_replacing(sessions_ended=_end_application_sessions(context))
                psql.stdin.write(statements.prelude.encode())
                tail = _forward_all_but_tail(context, backup, restore, psql, archive_fd, size)
                if restore.wait() != 0:
                    problem = f"pg_restore {how_it_ended(restore.returncode)}"
                else:
                    psql.stdin.write(_without_final_commit(tail))
                    lock_check = context.restore_committing(in_transaction=True)
                    if lock_check is not None:
                        psql.stdin.write(lock_check.statement.encode() + b";\n")
                    commit_sent = True
                    # Statistics after the COMMIT: a failing ANALYZE must not undo the restore.
                    psql.stdin.write(b"COMMIT;\n\\set ON_ERROR_STOP 0\n" + statements.finish.encode())
                    psql.stdin.close()
                    psql.wait()
            except BrokenPipeError:
                # psql closed its input by ending: at an error (its stderr says which) or killed.
                problem = f"psql {how_it_ended(psql.wait())}"
            except _ScriptProblem as exc:
                problem = str(exc)
            except _LockNotGranted as exc:
                not_granted = exc
                problem = "the restored tables were not locked"
            if problem is not None:
                # No COMMIT was sent. Stop psql rather than close its input: a psql waiting for a
                # lock does not read, and flushing into its full pipe would wait as long.
                _abandon(context, application, started)
            restore.wait()
            psql.wait()
            psql_err = _read(psql_errors)
            restore_err = _read(restore_errors)
        # psql may end in error after the COMMIT ran (a lost connection, killed): the server knows.
        committed = problem is None and (psql.returncode == 0 or _committed(context, transaction))
    except BaseException as stopped:
        # Stopped anyhow, at any moment from psql's start to the answer on its COMMIT: end the
        # transaction for sure before anything else happens, and on a signal ask the server
        # which side of the COMMIT it ended on.
        _abandon(context, application, started)
        if isinstance(stopped, KeyboardInterrupt):
            raise _Interrupted(stopped, _committed(context, transaction) if commit_sent else False) from None
        raise
    if committed:
        analyze = first_error(psql_err) or (f"psql {how_it_ended(psql.returncode)}" if psql.returncode else "")
        return f"; statistics not refreshed: {context.redactor.redact(analyze)}" if analyze else ""
    if lock_check is not None and LOCK_LOST in psql_err:
        raise lock_check.lost()  # the check failed in the restore's transaction, which rolled back
    if not_granted is not None:
        raise _held_by_sessions(context, backup, not_granted)
    # Without a word from either program, how they ended is the reason (psql killed before the
    # COMMIT reached it, by the out-of-memory killer say, says nothing).
    ended = problem or f"psql {how_it_ended(psql.returncode)}"
    detail = context.redactor.redact(first_error(psql_err) or first_error(restore_err) or ended)
    raise RestoreFailed(
        f"Restore of {backup.id} failed and was rolled back: {detail}",
        result={"restore_error": detail},
        suggestions=manual,
        backup_id=backup.id,
    )


def _begin(psql: subprocess.Popen) -> int | None:
    """Open the restore's transaction; returns its id, by which the server later says whether it
    committed (None if psql stopped first). Later query output is discarded."""
    assert psql.stdin and psql.stdout
    # READ WRITE: a migration being rolled back may have made new sessions default to read-only
    # (ALTER DATABASE ... SET default_transaction_read_only); the restore sets that back itself.
    psql.stdin.write(b"BEGIN READ WRITE;\nSELECT pg_catalog.txid_current();\n\\o " + os.devnull.encode() + b"\n")
    psql.stdin.flush()
    line = psql.stdout.readline().strip()
    return int(line) if line.isdigit() else None


def _lock(context: RunContext, psql: subprocess.Popen, lock: str, application: str) -> None:
    """Lock the restored tables in the restore's transaction (the session named ``application``);
    returns once they are locked. It waits for the transactions holding any of them, ends the
    application's sessions among them after :data:`LOCK_PATIENCE_SECONDS`, and raises
    :class:`_LockNotGranted` when others still hold them after :data:`LOCK_WAIT_SECONDS`
    (faber's interrupt stops the wait)."""
    assert psql.stdin and psql.stdout
    psql.stdin.write(lock.encode() + b"\\echo locked\n")
    psql.stdin.flush()
    started = time.monotonic()
    if not _answered(psql, LOCK_PATIENCE_SECONDS):
        with context.database.connect(application_name="faber restore check") as conn:
            while not _answered(psql, _LOCK_POLL_SECONDS):
                holders = _end_application_sessions_blocking(context, conn, application)
                waited = time.monotonic() - started
                if holders and waited >= LOCK_WAIT_SECONDS:
                    raise _LockNotGranted(holders, waited)
    if psql.stdout.readline().strip() != b"locked":
        # It ended: at an error (a deadlock with the application, say; its stderr says which) or killed.
        raise _ScriptProblem(f"psql {how_it_ended(psql.wait())} before the restored tables were locked")


def _answered(psql: subprocess.Popen, seconds: float) -> bool:
    """Whether psql wrote to its output (or closed it) within ``seconds``."""
    assert psql.stdout
    return bool(select.select([psql.stdout], [], [], seconds)[0])


# A prepared transaction that holds a lock blocks as pid 0, which no session has.
_SESSIONS_BLOCKING = """
SELECT DISTINCT b.pid, a.application_name, a.usename, a.state, a.backend_type,
       extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::float8
FROM pg_catalog.unnest(pg_catalog.pg_blocking_pids((
  SELECT r.pid FROM pg_catalog.pg_stat_activity r WHERE r.application_name = %s AND r.datname = current_database()
))) AS b(pid)
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = b.pid
"""


def _end_application_sessions_blocking(context: RunContext, conn: psycopg.Connection, application: str) -> list[str]:
    """End the application's sessions (:func:`writes.terminate_application_sessions`) that block
    the restore's session ``application``; returns the others that block it, described."""
    blocking = conn.execute(_SESSIONS_BLOCKING, [application]).fetchall()
    ended, _ = writes.terminate_application_sessions(conn, among=[pid for pid, *_ in blocking])
    if ended:
        _report_ended(context, ended, "they held the restored tables")
    ended_pids = {session.pid for session in ended}
    holders = []
    for pid, name, role, state, backend, age in blocking:
        if pid in ended_pids:
            continue
        if backend is None:
            holders.append("a prepared transaction (pg_prepared_xacts)" if pid == 0 else f"pid {pid}")
            continue
        who = context.redactor.redact(f"{name or backend}, role {role}" if role else name or backend)
        holders.append(f"pid {pid} ({who}, {state or 'no state'}, {age or 0:.0f}s)")
    return holders


def _held_by_sessions(context: RunContext, backup: BackupRecord, not_granted: _LockNotGranted) -> RestoreFailed:
    env = context.environment
    return RestoreFailed(
        f"Restore of {backup.id} stopped before it changed {env}: sessions faber does not end held the "
        f"restored tables for {not_granted.waited:.0f}s: {'; '.join(not_granted.holders)}; {env} is unchanged",
        result={"restore_error": "the restored tables were not locked", "holding_sessions": not_granted.holders},
        suggestions=[
            "End those sessions (SELECT pg_terminate_backend(<pid>), as their role or a superuser) or stop "
            f"what runs them, then restore again: faber rollback {env} --to {backup.id}",
        ],
        backup_id=backup.id,
    )


def _end_application_sessions(context: RunContext) -> bool:
    """End the application's sessions of the database (:func:`writes.end_application_sessions`);
    whether they all ended. One that cannot be reached says no: faber then waits for reports."""
    try:
        with context.database.connect(application_name="faber restore check") as conn:
            return writes.end_application_sessions(
                conn, ended=lambda sessions: _report_ended(context, sessions, "the restore replaces their tables")
            )
    except psycopg.Error:
        return False


def _report_ended(context: RunContext, sessions: list[writes.EndedSession], reason: str) -> None:
    context.emit(
        events.WRITES_SESSIONS_ENDED,
        reason=reason,
        sessions=[session._asdict() for session in sessions],
    )


def _committed(context: RunContext, transaction: int | None) -> bool | None:
    """Whether the restore's transaction committed, asked of the server once its session ended;
    None when the server cannot say."""
    if transaction is None:
        return False  # psql stopped before the transaction began
    deadline = time.monotonic() + COMMIT_CHECK_SECONDS
    try:
        with context.database.connect(application_name="faber restore check") as conn:
            while True:
                (status,) = conn.execute("SELECT pg_catalog.txid_status(%s)", [transaction]).fetchone()
                if status != "in progress" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    except psycopg.Error:
        return None
    return {"committed": True, "aborted": False}.get(status)


def _forward_all_but_tail(
    context: RunContext,
    backup: BackupRecord,
    restore: subprocess.Popen,
    psql: subprocess.Popen,
    archive_fd: int,
    size: int | None,
) -> bytes:
    """Copy pg_restore's script into psql, keeping back its last bytes (where its COMMIT is).
    ``size``: the archive file's, whose read offset is reported as the progress; None for a
    directory archive, of which only the elapsed time is."""
    assert restore.stdout and psql.stdin
    held = b""
    started = last_report = time.monotonic()
    while chunk := restore.stdout.read1(CHUNK):
        held += chunk
        if len(held) > _TAIL_BYTES:
            psql.stdin.write(held[:-_TAIL_BYTES])
            held = held[-_TAIL_BYTES:]
        now = time.monotonic()
        if now - last_report >= PROGRESS_INTERVAL_SECONDS:
            last_report = now
            read = {}
            if size is not None:
                # pg_restore reads the archive through faber's descriptor: its offset is the progress.
                offset = os.lseek(archive_fd, 0, os.SEEK_CUR)
                read = {"percent_progress": min(99, round(100 * offset / size)) if size else None, "bytes": offset}
            context.emit(
                events.BACKUP_PROGRESS,
                target=backup.id,
                status="restoring",
                elapsed_seconds=round(now - started),
                **read,
            )
    return held


def _without_final_commit(tail: bytes) -> bytes:
    match = _FINAL_COMMIT.search(tail)
    if match is None:
        raise _ScriptProblem("pg_restore's script did not end with its COMMIT; nothing was committed")
    return tail[: match.start()] + b"\n" + match.group(1)


def _abandon(context: RunContext, application: str, started: list[subprocess.Popen]) -> None:
    """Stop the programs ``started`` and end the restore's server session: its transaction rolls
    back now."""
    for program in reversed(started):
        stop(program)
        if program.stdin:
            with contextlib.suppress(OSError, ValueError):
                program.stdin.close()  # the program is gone: nothing is flushed, nothing waits
    _terminate_session(context, application)


def _terminate_session(context: RunContext, application: str) -> None:
    """End the restore's server session, so its transaction is rolled back now, not when noticed."""
    with contextlib.suppress(psycopg.Error):
        with context.database.connect(application_name="faber restore cleanup") as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                [application],
            )


def _read(handle: tempfile._TemporaryFileWrapper) -> str:  # type: ignore[name-defined]
    handle.seek(0)
    return handle.read().decode(errors="replace")


# pg_default_acl's object types, as ALTER DEFAULT PRIVILEGES names them, with the privileges
# PostgreSQL grants to PUBLIC when no default privileges are set (the owner always gets ALL).
_DEFAULT_ACL_OBJECTS = {
    "r": ("TABLES", None),
    "S": ("SEQUENCES", None),
    "f": ("FUNCTIONS", "EXECUTE"),
    "T": ("TYPES", "USAGE"),
    "n": ("SCHEMAS", None),
}


def _reset_global_default_privileges(conn: psycopg.Connection) -> list[sql.Composable]:
    """Statements that put every role's database-wide default privileges back to PostgreSQL's own,
    so that the archive's ``ALTER DEFAULT PRIVILEGES`` leave those of the backup and no others. A
    schema's own default privileges go with the schema.

    Each entry is revoked from all its grantees and the built-in defaults granted again, after
    which PostgreSQL deletes the entry as it equals the defaults. Entries of roles faber's user is
    not a member of cannot be changed by it and are left as they are."""
    statements: list[sql.Composable] = []
    rows = conn.execute(
        """
        SELECT pg_get_userbyid(d.defaclrole), d.defaclobjtype,
               array_agg(DISTINCT CASE a.grantee WHEN 0 THEN '' ELSE pg_get_userbyid(a.grantee) END)
        FROM pg_default_acl d, aclexplode(d.defaclacl) a
        WHERE d.defaclnamespace = 0 AND pg_has_role(d.defaclrole, 'MEMBER')
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    ).fetchall()
    for role, object_type, grantees in rows:
        if object_type not in _DEFAULT_ACL_OBJECTS:
            continue  # a kind of object newer than this faber: left as it is
        objects, public_default = _DEFAULT_ACL_OBJECTS[object_type]
        for_role = sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} ").format(sql.Identifier(role))
        revoked_from = sql.SQL(", ").join(
            sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC") for grantee in grantees
        )
        statements.append(for_role + sql.SQL("REVOKE ALL ON {} FROM {};").format(sql.SQL(objects), revoked_from))
        statements.append(for_role + sql.SQL("GRANT ALL ON {} TO {};").format(sql.SQL(objects), sql.Identifier(role)))
        if public_default:
            statements.append(
                for_role + sql.SQL("GRANT {} ON {} TO PUBLIC;").format(sql.SQL(public_default), sql.SQL(objects))
            )
    return statements


def first_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error:" in line or "FATAL" in line]
    return "; ".join(errors[:3]) or (lines[0] if lines else "")


_REPLACED_SCHEMAS = """
    FROM pg_catalog.pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> ALL(%(keep)s)
      AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
"""
"""The schemas an in-place restore drops and the archive creates again: all but the kept ones,
PostgreSQL's own and an extension's."""


def in_place_refusal(context: RunContext, user: str, refused: list[str]) -> tuple[str, list[str]]:
    """Why an in-place restore cannot run as ``user`` (:func:`objects_it_may_not_drop`), and what to grant."""
    reason = (
        "an in-place restore drops the database's schemas and what lives beside them and creates them again from "
        f"the backup, and the user {user} may not drop {', '.join(refused)}"
    )
    return reason, [
        f"Give the user those objects (ALTER SCHEMA <schema> OWNER TO {user}; from PostgreSQL 15 public is the "
        "database owner's), or deploy as their owner",
        f"Or restore by swap, into a new database (restore_mode swap in database.environments.{context.environment}"
        ".backup; it needs CREATEDB and the owner's role)",
    ]


_NOT_AN_EXTENSION_MEMBER = (
    "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = '{catalog}'::regclass"
    " AND d.objid = {oid} AND d.deptype = 'e')"
)
_DROPPED_BY_THE_PRELUDE = (
    # (what one is called, its owner, the ones the prelude drops: a FROM ... WHERE clause)
    ("'schema ' || n.nspname", "n.nspowner", _REPLACED_SCHEMAS),
    (
        "'extension ' || e.extname",
        "e.extowner",
        "FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname <> 'plpgsql' AND n.nspname <> ALL(%(keep)s)",
    ),
    (
        "'event trigger ' || e.evtname",
        "e.evtowner",
        "FROM pg_catalog.pg_event_trigger e"
        f" WHERE {_NOT_AN_EXTENSION_MEMBER.format(catalog='pg_event_trigger', oid='e.oid')}",
    ),
    ("'publication ' || p.pubname", "p.pubowner", "FROM pg_catalog.pg_publication p WHERE true"),
    (
        "'subscription ' || s.subname",
        "s.subowner",
        "FROM pg_catalog.pg_subscription s"
        " WHERE s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
    ),
    (
        "'foreign server ' || s.srvname",
        "s.srvowner",
        "FROM pg_catalog.pg_foreign_server s"
        f" WHERE {_NOT_AN_EXTENSION_MEMBER.format(catalog='pg_foreign_server', oid='s.oid')}",
    ),
    ("'large object ' || m.oid", "m.lomowner", "FROM pg_catalog.pg_largeobject_metadata m WHERE true"),
)


def objects_it_may_not_drop(conn: psycopg.Connection, keep_schemas: list[str]) -> list[str]:
    """What an in-place restore's prelude (:func:`restore_prelude`) drops that the session's user
    may not, at most ten: dropping an object takes its owner's rights (PostgreSQL 15's ``public``
    is the database owner's; an extension, event trigger or publication an administrator created is
    the administrator's), which a deploy user granted CREATE on the database does not have."""
    return _owned_without(conn, keep_schemas, _DROPPED_BY_THE_PRELUDE, "USAGE")


def _owned_without(
    conn: psycopg.Connection, keep_schemas: list[str], objects: tuple[tuple[str, str, str], ...], right: str
) -> list[str]:
    """Each of ``objects`` (what one is called, its owner, a FROM ... WHERE clause naming them)
    whose owner's role the session's user lacks ``right`` in (``pg_has_role``), with its owner, at
    most ten."""
    query = " UNION ALL ".join(
        f"(SELECT {what} || ' (owner ' || pg_catalog.pg_get_userbyid({owner}) || ')' {source}"
        f" AND NOT pg_catalog.pg_has_role({owner}, '{right}'))"
        for what, owner, source in objects
    )
    return [row[0] for row in conn.execute(f"{query} ORDER BY 1 LIMIT 10", {"keep": keep_schemas}).fetchall()]


_IN_A_REPLACED_SCHEMA = (
    # (what one is called, its owner, the ones the archive holds: a FROM ... WHERE clause)
    ("'schema ' || n.nspname", "n.nspowner", _REPLACED_SCHEMAS),
    *(
        (
            f"{kind} || ' ' || pg_catalog.quote_ident(n.nspname) || '.' || {name}",
            owner,
            f"FROM {catalog} o JOIN pg_catalog.pg_namespace n ON n.oid = o.{namespace}"
            f" WHERE {where} AND n.oid IN (SELECT n.oid {_REPLACED_SCHEMAS})"
            f" AND {_NOT_AN_EXTENSION_MEMBER.format(catalog=catalog, oid='o.oid')}",
        )
        for kind, name, owner, catalog, namespace, where in (
            (
                "CASE o.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'"
                " WHEN 'f' THEN 'foreign table' ELSE 'table' END",
                "pg_catalog.quote_ident(o.relname)",
                "o.relowner",
                "pg_catalog.pg_class",
                "relnamespace",
                "o.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
            ),
            ("'function'", "o.oid::regprocedure::text", "o.proowner", "pg_catalog.pg_proc", "pronamespace", "true"),
            (
                "'type'",
                "pg_catalog.quote_ident(o.typname)",
                "o.typowner",
                "pg_catalog.pg_type",
                "typnamespace",
                # A table's row type and an array type go with the table or the element type.
                "o.typcategory <> 'A' AND (o.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class c"
                " WHERE c.oid = o.typrelid) = 'c')",
            ),
            (
                "'collation'",
                "pg_catalog.quote_ident(o.collname)",
                "o.collowner",
                "pg_catalog.pg_collation",
                "collnamespace",
                "true",
            ),
            (
                "'conversion'",
                "pg_catalog.quote_ident(o.conname)",
                "o.conowner",
                "pg_catalog.pg_conversion",
                "connamespace",
                "true",
            ),
            ("'operator'", "o.oid::regoperator::text", "o.oprowner", "pg_catalog.pg_operator", "oprnamespace", "true"),
            (
                "'text search configuration'",
                "pg_catalog.quote_ident(o.cfgname)",
                "o.cfgowner",
                "pg_catalog.pg_ts_config",
                "cfgnamespace",
                "true",
            ),
            (
                "'text search dictionary'",
                "pg_catalog.quote_ident(o.dictname)",
                "o.dictowner",
                "pg_catalog.pg_ts_dict",
                "dictnamespace",
                "true",
            ),
            (
                "'statistics object'",
                "pg_catalog.quote_ident(o.stxname)",
                "o.stxowner",
                "pg_catalog.pg_statistic_ext",
                "stxnamespace",
                "true",
            ),
        )
    ),
)


def owners_it_may_not_restore(conn: psycopg.Connection, keep_schemas: list[str]) -> list[str]:
    """The objects a restore creates again from the archive (every schema but ``keep_schemas``)
    whose owner the session's user may not give them back, at most ten: the archive's ``ALTER ...
    OWNER TO`` takes membership of the owner's role (a table or view an administrator created in
    the application's schema is the administrator's), and fails the whole restore."""
    return _owned_without(conn, keep_schemas, _IN_A_REPLACED_SCHEMA, "MEMBER")


def restore_prelude(conn: psycopg.Connection, *keep_schemas: str) -> str:
    """SQL that empties the database of everything a restore brings back, except ``keep_schemas``.

    Objects outside any schema (event triggers, publications, subscriptions, large objects,
    foreign servers, casts, default privileges for the whole database) would otherwise make the
    archive's ``CREATE`` fail or survive the restore; objects that belong to an extension go with
    their extension.
    """
    statements: list[sql.Composable] = []

    def names(query: str, params: list | None = None) -> list[str]:
        return [row[0] for row in conn.execute(query, params or []).fetchall()]

    not_extension_member = (
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {catalog}::regclass"
        " AND d.objid = {oid} AND d.deptype = 'e')"
    )
    # Event triggers first: they would fire on the restore's own DDL.
    for name in names(
        "SELECT evtname FROM pg_event_trigger e WHERE "
        + not_extension_member.format(catalog="'pg_event_trigger'", oid="e.oid")
    ):
        statements.append(sql.SQL("DROP EVENT TRIGGER IF EXISTS {};").format(sql.Identifier(name)))
    # A subscription with a replication slot cannot be dropped in a transaction: detach the slot
    # first. The slot stays on the publisher, so the restored (disabled) subscription can resume.
    for name in names(
        "SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database"
        " WHERE datname = current_database())"
    ):
        subscription = sql.Identifier(name)
        statements += [
            sql.SQL("ALTER SUBSCRIPTION {} DISABLE;").format(subscription),
            sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE);").format(subscription),
            sql.SQL("DROP SUBSCRIPTION {};").format(subscription),
        ]
    for name in names("SELECT pubname FROM pg_publication"):
        statements.append(sql.SQL("DROP PUBLICATION IF EXISTS {};").format(sql.Identifier(name)))
    if names("SELECT 1 FROM pg_largeobject_metadata LIMIT 1"):
        statements.append(sql.SQL("SELECT count(pg_catalog.lo_unlink(oid)) FROM pg_catalog.pg_largeobject_metadata;"))
    for name in names(
        "SELECT srvname FROM pg_foreign_server s WHERE "
        + not_extension_member.format(catalog="'pg_foreign_server'", oid="s.oid")
    ):
        statements.append(sql.SQL("DROP SERVER IF EXISTS {} CASCADE;").format(sql.Identifier(name)))
    for source, target in conn.execute(
        "SELECT format_type(castsource, NULL), format_type(casttarget, NULL) FROM pg_cast c WHERE c.oid >= 16384 AND "
        + not_extension_member.format(catalog="'pg_cast'", oid="c.oid")
    ).fetchall():
        statements.append(sql.SQL("DROP CAST IF EXISTS ({} AS {});").format(sql.SQL(source), sql.SQL(target)))
    statements += _reset_global_default_privileges(conn)
    public_owner = names("SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'")
    replaced = conn.execute(f"SELECT n.nspname {_REPLACED_SCHEMAS} ORDER BY 1", {"keep": list(keep_schemas)})
    schemas = [name for (name,) in replaced.fetchall()]
    statements += [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;").format(sql.Identifier(s)) for s in schemas]
    # Extensions living elsewhere (pg_catalog, a schema of their own) survive the schema drops.
    extensions = names(
        "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname <> 'plpgsql' AND n.nspname <> ALL(%s) ORDER BY 1",
        [list(keep_schemas)],
    )
    if extensions:
        statements.append(
            sql.SQL("DROP EXTENSION IF EXISTS {};").format(sql.SQL(", ").join(map(sql.Identifier, extensions)))
        )
    # pg_dump never creates `public`; put it back as initdb made it, and the archive re-applies
    # any privileges that differed from that.
    if conn.info.server_version >= 150000:
        # Its owner as it is (initdb's pg_database_owner, or the deploy user a DBA gave it to, who
        # may then drop it and create it again as its own).
        owner = public_owner[0] if public_owner else "pg_database_owner"
        statements.append(sql.SQL("CREATE SCHEMA public AUTHORIZATION {};").format(sql.Identifier(owner)))
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA public TO PUBLIC;"))
    else:
        statements.append(sql.SQL("CREATE SCHEMA public;"))
        statements.append(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;"))
    statements.append(sql.SQL("COMMENT ON SCHEMA public IS 'standard public schema';"))
    return "\n".join(s.as_string(conn) for s in statements) + "\n"
