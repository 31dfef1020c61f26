"""Deploys that may have left a migration in part: ``faber_unfinished_migrations``.

A migration that runs outside a transaction (every Sequelize migration, a TypeORM one with
``transaction = false``, SQL that cannot run in one, whatever its handler says:
:func:`faber_core.safety.checks.outside_a_transaction`) commits statement by statement, and its
tool may record it only once it has finished. A deploy killed inside one (``kill -9``, the
machine lost) leaves part of it committed and nothing that says so: the next deploy would run it
again from its start. So, before the apply
step of a deploy with such a migration pending, faber records the pending migrations in its own
table (PostgreSQL: in ``faber_schema``; MySQL/MariaDB: beside the application's, one of faber's
tables), which backups leave out and restores keep, and removes them when the run ends, unless
killed or stopped by a failure inside such a migration after part of it may have committed (and
not restored): a failed deploy's report is read once, and the next deploy would run it again too.

A record of another run that shows no sign of life is a deploy that was killed or failed inside
a migration: migrations apply in order, so the first of its migrations still pending is the one it
was in (or had not reached). When that one runs outside a transaction, every status read reports
it as failed, so the next deploy stops at its health check, naming it, the backup that run took
and ``faber resolve``. A restore of a backup taken before that run, or ``faber resolve ENV NAME``,
removes the record. A restore removes it as it commits, so that no kill leaves the backup restored
and its record behind: in the restore's own transaction (:func:`forget_undone_statement`), in the
copy a swap makes the database, or, on MySQL/MariaDB, before the swap's journal goes, which a
restore stopped in between is finished from (:func:`forget_undone`); for any other provider's
restore, once it returned (:func:`forget_restored`).

A run still deploying shows it two ways: its lock session holds faber's lock, and, from as it
writes its record until its apply step ends, it holds a lock of its own named by its run id,
on a session a thread of it replaces when ended (:mod:`faber_core.audit.run_lock`). The lock
session alone is not enough: ended while the run is inside a migration on another session, it
frees faber's lock for the next run while the migration goes on. A run that takes faber's lock
and finds a record of a run alive (its run lock held) stops there, changing nothing
(:func:`refuse_while_another_run_deploys`, ``LOCKED``); status reads report nothing of it as
failed. A record showing neither sign is looked at again
:data:`~faber_core.audit.run_lock.SETTLE_SECONDS` later, once per process, before it is taken for a
killed run's: both sessions of a live run may have just been ended, its run lock not yet taken
again; a record of an older faber, which takes no run lock, is so read too.

A session is named so that a later one is not taken for it: PostgreSQL's ``pid@backend_start``;
MySQL/MariaDB's ``CONNECTION_ID()@server start`` (ids start again from 1 as the server restarts;
a record of an older faber names the id alone). A run holding faber's lock takes no record of
another run for a live one, whatever session it names. The record is the database's: a run
counts every record in it, whatever environment name the run that wrote it had (the
``environment`` column says, for people reading the table). A record that cannot be read (a user
without the privilege) reports nothing failed, and the run says the check could not run
(:func:`unchecked`).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from faber_core import events
from faber_core.audit import run_lock
from faber_core.audit.run_lock import RunLock
from faber_core.backup.mysqldump import UNFINISHED_MIGRATIONS as TABLE
from faber_core.context import RunContext
from faber_core.errors import Locked
from faber_core.interrupts import pause
from faber_core.models import BackupRecord, LocalMigration, MigrationRecord, MigrationState

_COLUMNS = (
    "run_id",
    "lock_session",
    "environment",
    "position",
    "migration",
    "outside_transaction",
    "before_run",
)
_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    run_id              varchar(64) NOT NULL,
    lock_session        varchar(128) NOT NULL,
    environment         varchar(255) NOT NULL,
    position            int NOT NULL,
    migration           varchar(1024) NOT NULL,
    outside_transaction boolean NOT NULL,
    before_run          varchar(64) NOT NULL,
    PRIMARY KEY (run_id, position)
)
"""


_RECORDED = "unfinished_recorded"
"""``Database.learnt``'s key: this run wrote its pending migrations to the table (:func:`record`)."""
_UNCHECKED = "unfinished_unchecked"
"""``Database.learnt``'s key: why a read of the table failed (:func:`unchecked`)."""
UNCHECKED = (
    f"the check for migrations a killed deploy left in part could not run ({TABLE} could not be read),"
    " so none is reported as failed"
)
_OWN_LOCK_SESSION = "unfinished_own_lock_session"
"""``Database.learnt``'s key: the server's id of the session holding this run's lock, while held."""

_RUN_LOCK = "unfinished_run_lock"
"""``Database.learnt``'s key: this run's :class:`~faber_core.audit.run_lock.RunLock`, from
:func:`record` until the apply step ends (:func:`apply_ended`)."""
_KILLED_RUNS = "unfinished_killed_runs"
"""``Database.learnt``'s key: the run ids whose records a look found without a sign of life, twice
:data:`~faber_core.audit.run_lock.SETTLE_SECONDS` apart: a killed run stays killed."""

_LOCKED = "unfinished_under_lock"
"""``Database.learnt``'s key: this run holds faber's lock (:func:`reads_under_lock`)."""

_EXISTS = "unfinished_table_exists"
"""``Database.learnt``'s key: whether the table exists, as a look made under faber's lock found it,
or as this run made it since."""

KILLED = (
    "a faber migrate was killed inside it, or it failed and was not rolled back; it runs outside a transaction:"
    " part of it may have committed"
)


@dataclass(frozen=True)
class Unfinished:
    """The migration a killed deploy may have left in part, and the time a backup that holds none
    of that deploy's migrations was taken by (the one it took, or the start of its apply step)."""

    migration: str
    run_id: str
    before_run: dt.datetime


def _mysql(context: RunContext) -> bool:
    """faber's tables beside the application's (MySQL/MariaDB), not in a schema of its own."""
    return not context.database.engine.faber_schema_of_its_own


def _table(context: RunContext) -> str:
    if not _mysql(context):
        schema = context.config.database.faber_schema
        return '"' + schema.replace('"', '""') + '".' + TABLE
    return TABLE


@contextmanager
def reads_under_lock(context: RunContext, lock_session: str | None) -> Iterator[None]:
    """While this run holds faber's lock, on the server's session ``lock_session``
    (:meth:`~faber_core.engines.HeldLock.session_id`; None where the engine cannot tell). A record
    of another run naming that session is never a run deploying now. And only this run can create
    the table (:func:`record` creates it under the lock), so the first look under the lock is kept
    for the reads after it. That first look must still be made: a run killed while it held the lock
    before this one may have created the table before this run took the lock. Once the lock is
    let go, another run may create it: what was learnt is forgotten."""
    learnt = context.database.learnt
    learnt[_LOCKED] = True
    if lock_session is not None:
        learnt[_OWN_LOCK_SESSION] = lock_session
    try:
        yield
    finally:
        for key in (_LOCKED, _EXISTS, _OWN_LOCK_SESSION):
            learnt.pop(key, None)


def _exists(context: RunContext, conn: Any) -> bool:
    learnt = context.database.learnt
    if _EXISTS in learnt:
        return learnt[_EXISTS]
    exists = _present(context, conn)
    if learnt.get(_LOCKED):
        learnt[_EXISTS] = exists
    return exists


def _present(context: RunContext, conn: Any) -> bool:
    """Whether the table is in the database ``conn`` is a session of, as a look now finds it."""
    if not _mysql(context):
        query = "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s"
        return conn.execute(query, [context.config.database.faber_schema, TABLE]).fetchone() is not None
    query = "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
    return conn.execute(query, [TABLE]).fetchone() is not None


def _warn(what: str, context: RunContext, exc: Exception) -> str:
    """Say on stderr that ``what`` happened because of ``exc``; return the reason given (redacted)."""
    text = str(exc).strip()
    reason = context.redactor.redact(text.splitlines()[0] if text else type(exc).__name__)
    sys.stderr.write(f"warning: {what}: {reason}\n")
    return reason


BOOT_TOLERANCE_SECONDS = 5
"""How far apart two reads of a MySQL/MariaDB server's start (now less its ``Uptime``, each to the
second) may be and still name the same start: a restart moves it by the whole uptime before it."""


def _mysql_boot(conn: Any) -> int:
    """When the MySQL/MariaDB server started (Unix time): its connection ids start again from 1
    then, so an id names a session only together with it."""
    uptime = int(conn.execute("SHOW GLOBAL STATUS LIKE 'Uptime'").fetchone()[1])
    return int(conn.execute("SELECT UNIX_TIMESTAMP()").fetchone()[0]) - uptime


def _session(context: RunContext, conn: Any) -> str:
    """The server session ``conn`` is, as :func:`_lock_holder` names it: PostgreSQL
    ``pid@backend_start``; MySQL/MariaDB ``CONNECTION_ID()@server start`` (a record of an older
    faber names the id alone)."""
    if _mysql(context):
        session_id = conn.execute("SELECT CONNECTION_ID()").fetchone()[0]
        return f"{session_id}@{_mysql_boot(conn)}"
    query = (
        "SELECT pid || '@' || extract(epoch FROM backend_start) FROM pg_catalog.pg_stat_activity"
        " WHERE pid = pg_backend_pid()"
    )
    return conn.execute(query).fetchone()[0]


def _lock_holder(context: RunContext, conn: Any) -> str | None:
    """The server session holding faber's lock on the database now, if one does, named as
    :func:`_session` names it; None too when it is this run's own lock session (:func:`reads_under_lock`):
    holding the lock, it is the only run deploying, and a record of another run naming its session
    was left by a run of the same session id before a restart of the server."""
    if _mysql(context):
        from faber_core.engines.mysql import faber_lock_name_on_server

        holder = conn.execute("SELECT IS_USED_LOCK(%s)", [faber_lock_name_on_server(conn)]).fetchone()[0]
        if holder is None or str(holder) == context.database.learnt.get(_OWN_LOCK_SESSION):
            return None
        return f"{holder}@{_mysql_boot(conn)}"
    from faber_core.postgres.locks import HOLDING, database_lock_key

    query = f"SELECT a.pid, a.pid || '@' || extract(epoch FROM a.backend_start) {HOLDING}"
    row = conn.execute(query, {"key": database_lock_key(context.database, conn)}).fetchone()
    if row is None or str(row[0]) == context.database.learnt.get(_OWN_LOCK_SESSION):
        return None
    return row[1]


def _is_holder(context: RunContext, recorded: str, holder: str | None) -> bool:
    """Whether the session a record names (:func:`_session`) is ``holder``, the one holding
    faber's lock now. On MySQL/MariaDB the same id and the same server start, within
    :data:`BOOT_TOLERANCE_SECONDS`; a record of an older faber, without the start, by its id."""
    if holder is None:
        return False
    if not _mysql(context):
        return recorded == holder
    recorded_id, _, recorded_boot = recorded.partition("@")
    holder_id, _, holder_boot = holder.partition("@")
    if recorded_id != holder_id:
        return False
    if not recorded_boot:
        return True
    try:
        return abs(int(recorded_boot) - int(holder_boot)) <= BOOT_TOLERANCE_SECONDS
    except ValueError:
        return False


def record(
    context: RunContext,
    lock_conn: Any,
    pending: list[LocalMigration],
    outside_transaction: set[str],
    backup: BackupRecord | None,
) -> None:
    """Before the apply step, faber's lock held on ``lock_conn``: record ``pending`` when one of
    them runs outside a transaction, as ``outside_transaction`` names them: those the handler says
    so of, and those whose SQL faber analysed as such (:func:`faber_core.safety.checks.outside_a_transaction`).
    Not recorded (the table cannot be created, say), the deploy goes on, with a warning."""
    if not any(migration.name in outside_transaction for migration in pending):
        return
    try:
        lock_session = _session(context, lock_conn)
    except context.database.connect_errors as exc:
        _warn("the migrations about to run outside a transaction were not recorded", context, exc)
        return
    # A backup's time by its provider's clock, the one a restore compares; a run without a backup
    # of its own is undone by any backup taken before its apply step.
    before_run = backup.created_at if backup else dt.datetime.now(dt.timezone.utc)
    rows = [
        [
            context.run_id,
            lock_session,
            context.environment,
            position,
            migration.name,
            migration.name in outside_transaction,
            before_run.isoformat(),
        ]
        for position, migration in enumerate(pending)
    ]
    values = ", ".join("(" + ", ".join(["%s"] * len(_COLUMNS)) + ")" for _ in rows)
    _keep_alive(context)
    # Before the write: an INSERT whose answer is lost may have committed.
    context.database.learnt[_RECORDED] = True
    try:
        with context.database.session() as conn:
            if not _exists(context, conn):
                # Unknown until it is made: a CREATE whose answer is lost may have committed.
                context.database.learnt.pop(_EXISTS, None)
                if not _mysql(context):
                    from faber_core.audit.history import ensure_table

                    ensure_table(conn, context.config.database.faber_schema)  # creates faber's schema
                conn.execute(_CREATE.format(table=_table(context)))
                if context.database.learnt.get(_LOCKED):
                    context.database.learnt[_EXISTS] = True
            conn.execute(
                f"INSERT INTO {_table(context)} ({', '.join(_COLUMNS)}) VALUES {values}",
                [value for row in rows for value in row],
            )
    except context.database.connect_errors as exc:
        _warn("the migrations about to run outside a transaction were not recorded", context, exc)


def _keep_alive(context: RunContext) -> None:
    """Take this run's lock (:mod:`faber_core.audit.run_lock`) as its record is written, so that
    the record shows the run alive even once its lock session has ended. Until a session of its
    own is connected the lock session shows it; where none can be had (the server refuses new
    sessions), the lock session is the only sign, as for a record of an older faber."""
    kept = RunLock(
        context.database, context.run_id, mysql=_mysql(context), application_name=f"faber run {context.run_id}"
    )
    kept.take()
    context.database.learnt[_RUN_LOCK] = kept


def apply_ended(context: RunContext) -> None:
    """The apply step ended (the migrations applied, one failed, or the run interrupted and its
    runner stopped): no migration of this run goes on, so its run lock is let go. A record it keeps
    then (a failure inside a migration) reads as a killed run's, which it is as much: nothing will
    finish that migration. Let go here, not as faber's lock goes: a swap restore after a failed
    deploy ends every session of the database, and a run lock taken again meanwhile would hold a
    session the swap's rename waits for."""
    kept = context.database.learnt.pop(_RUN_LOCK, None)
    if kept is not None:
        kept.let_go()


def _delete(context: RunContext, condition: str, params: list[Any]) -> bool:
    """Whether there was a record to remove."""
    where = f"FROM {_table(context)} WHERE {condition}"
    try:
        with context.database.session() as conn:
            if not _exists(context, conn) or conn.execute(f"SELECT 1 {where} LIMIT 1", params).fetchone() is None:
                return False
            conn.execute(f"DELETE {where}", params)
            return True
    except context.database.connect_errors as exc:
        _warn("the record of the migrations this run started was not removed", context, exc)
        return False


def recorded(context: RunContext) -> bool:
    """Whether this run recorded its pending migrations (it may have: an INSERT whose answer was
    lost counts), so that a record it keeps makes the next run report its migration as failed."""
    return bool(context.database.learnt.get(_RECORDED))


def forget_run(context: RunContext) -> None:
    """The run ended (not killed): what it recorded says nothing any more. A run that recorded
    nothing (no migration outside a transaction was pending) has nothing to remove: its rows are
    its own, by its run id."""
    if recorded(context):
        _delete(context, "run_id = %s", [context.run_id])


def forget_migration(context: RunContext, name: str) -> bool:
    """``faber resolve``: a person has dealt with what a killed deploy left of ``name``. Whether a
    killed deploy had left it. A run that recorded ``name`` forgets it and the migrations it
    recorded after it: killed in ``name`` or before, it never started those."""
    return _forget_from(context, name, ">=")


def forget_migrations_after(context: RunContext, name: str) -> bool:
    """``faber resolve --applied``, before the tool marks ``name`` applied: a run that recorded
    ``name`` forgets the migrations it recorded after it, which it never started. Else, killed once
    the tool had marked ``name``, the record would name the first of those as the one it was in."""
    return _forget_from(context, name, ">")


def _forget_from(context: RunContext, name: str, position_is: str) -> bool:
    try:
        with context.database.session() as conn:
            if not _exists(context, conn):
                return False
            recorded = conn.execute(
                f"SELECT run_id, position FROM {_table(context)} WHERE migration = %s", [name]
            ).fetchall()
            for run_id, position in recorded:
                conn.execute(
                    f"DELETE FROM {_table(context)} WHERE run_id = %s AND position {position_is} %s", [run_id, position]
                )
            return bool(recorded)
    except context.database.connect_errors as exc:
        _warn("the record of the migrations a killed run started was not removed", context, exc)
        return False


_NOT_UPDATED = "the record of the migrations killed deploys left was not updated"


def forget_restored(context: RunContext, backup: BackupRecord) -> None:
    """``backup`` was restored: what deploys that took their backup since did is gone."""
    context.database.learnt.pop(_EXISTS, None)  # the database is the backup's now: look again
    try:
        with context.database.session() as conn:
            forget_undone(context, conn, backup.created_at)
    except context.database.connect_errors as exc:
        _warn(_NOT_UPDATED, context, exc)


def forget_undone(context: RunContext, conn: Any, backup_taken: dt.datetime) -> None:
    """On ``conn``, a session of the database a backup taken at ``backup_taken`` replaced, or of
    the copy of it about to take the database's place: remove the records of the runs that backup
    undoes (:func:`_undone_runs`). Not removed (a user who may not), a warning says so."""
    try:
        for run_id in _undone_runs(context, conn, backup_taken):
            conn.execute(f"DELETE FROM {_table(context)} WHERE run_id = %s", [run_id])
    except context.database.connect_errors as exc:
        _warn(_NOT_UPDATED, context, exc)


def forget_undone_statement(context: RunContext, backup_taken: dt.datetime) -> str | None:
    """:func:`forget_undone` as SQL for a restore's own transaction on PostgreSQL, where it commits
    with the restore: killed once the restore committed, faber has nothing left to remove. Decided
    now, before the restore, from the record as it is: faber holds its lock, so no other run writes
    it meanwhile, and the restore keeps faber's schema. None when there is nothing to remove, or
    when this user may not read or write the record: the restore must not fail on that, and the
    removal after it says so (:func:`forget_restored`)."""
    from psycopg import sql

    table = _table(context)
    try:
        with context.database.session() as conn:
            undone = _undone_runs(context, conn, backup_taken)
            if not undone:
                return None
            may_delete = conn.execute("SELECT pg_catalog.has_table_privilege(%s, 'DELETE')", [table]).fetchone()[0]
            if not may_delete:
                return None
            runs = sql.SQL(", ").join(sql.Literal(run_id) for run_id in undone)
            return sql.SQL("DELETE FROM {} WHERE run_id IN ({})").format(sql.SQL(table), runs).as_string(conn)
    except context.database.connect_errors:
        return None


def _undone_runs(context: RunContext, conn: Any, backup_taken: dt.datetime) -> list[str]:
    """The runs whose records a restore of a backup taken at ``backup_taken`` makes obsolete: those
    that took their backup then or later (or began their apply step then or later), whose
    migrations that backup holds none of. Looked for on ``conn`` itself, which may be a copy of the
    database (what was learnt of the table is the database's)."""
    if not _present(context, conn):
        return []
    taken = conn.execute(f"SELECT DISTINCT run_id, before_run FROM {_table(context)}").fetchall()
    return [run_id for run_id, before_run in taken if dt.datetime.fromisoformat(before_run) >= backup_taken]


def _records_of_other_runs(context: RunContext, conn: Any) -> list[tuple[Any, ...]]:
    """The record's rows of the runs other than this one, each run's in order: ``(run_id,
    lock_session, migration, outside_transaction, before_run)``; none without the table."""
    if not _exists(context, conn):
        return []
    return conn.execute(
        f"SELECT run_id, lock_session, migration, outside_transaction, before_run FROM {_table(context)}"
        " WHERE run_id <> %s ORDER BY run_id, position",
        [context.run_id],
    ).fetchall()


def left_by_killed_runs(context: RunContext, conn: Any, applied: set[str]) -> list[Unfinished]:
    """Per killed run that recorded migrations: the first of them not applied now, when it runs
    outside a transaction."""
    rows = _records_of_other_runs(context, conn)
    if not rows:
        return []
    # A run deploying now: its migrations are not left by anyone.
    live = _live_runs(context, conn, [(run_id, lock_session) for run_id, lock_session, *_ in rows])
    found, seen = [], set()
    for run_id, _, migration, outside_transaction, before_run in rows:
        if run_id in seen or run_id in live or migration in applied:
            continue
        seen.add(run_id)
        if outside_transaction:
            found.append(Unfinished(migration, run_id, dt.datetime.fromisoformat(before_run)))
    return found


def _live_runs(context: RunContext, conn: Any, records: list[tuple[str, str]]) -> set[str]:
    """Of the runs of ``records`` (run id, lock session), those alive: their lock session holds
    faber's lock, or a session holds their run lock (:mod:`faber_core.audit.run_lock`). A run that
    shows neither is looked at again :data:`~faber_core.audit.run_lock.SETTLE_SECONDS` later (once
    per process: a killed run stays killed), as a run both of whose sessions were just ended takes
    its run lock again meanwhile; a record of an older faber, which takes no run lock, is so taken
    for a killed run's after that wait."""
    killed = context.database.learnt.setdefault(_KILLED_RUNS, set())
    sessions = {run_id: lock_session for run_id, lock_session in records if run_id not in killed}
    if not sessions:
        return set()

    def alive(run_ids: set[str]) -> set[str]:
        holder = _lock_holder(context, conn)
        locking = {run_id for run_id in run_ids if _is_holder(context, sessions[run_id], holder)}
        return locking | run_lock.held(conn, sorted(run_ids - locking), mysql=_mysql(context))

    live = alive(set(sessions))
    if silent := set(sessions) - live:
        pause(run_lock.SETTLE_SECONDS)
        live |= alive(silent)
        killed.update(silent - live)
    return live


def refuse_while_another_run_deploys(context: RunContext) -> None:
    """Just after this run took faber's lock: raise :class:`~faber_core.errors.Locked` when a run
    whose record is in the table still lives. It deploys without faber's lock (its lock session
    was ended under it, inside a migration that runs on another session): a deploy now would run
    its migration again beside it, and the advice to resolve it would discard its work. Nothing
    is changed; the run can be retried once that one has ended. A record that cannot be read is
    left to the status read, which says so (:func:`unchecked`).

    A transactional migration leaves no record: its run shows it is alive by its migration session,
    which holds faber's migration lock (:meth:`~faber_core.engines.Engine.migration_lock_statement`)
    until it ends and its transaction with it."""
    try:
        with context.database.session() as conn:
            migrating = _migration_sessions_once_waited(context, conn)
            if migrating:
                raise _still_migrating(context, migrating)
            rows = _records_of_other_runs(context, conn)
            if not rows:
                return
            live = _live_runs(context, conn, [(run_id, lock_session) for run_id, lock_session, *_ in rows])
            if not live:
                return
            deploying = min(live)
            sign = run_lock.holder(conn, deploying, mysql=_mysql(context))
    except context.database.connect_errors:
        return
    migrations = ", ".join(migration for run_id, _, migration, *_ in rows if run_id == deploying)
    raise Locked(
        f"Another faber run ({deploying}) is still deploying {migrations} on this database, though its "
        "session holding faber's lock was ended; nothing was changed",
        suggestions=[
            f"It shows it is alive by holding its own lock ({sign or 'taken again as this run looked'});"
            " wait for it to end, then run the same command again",
            f"Check on it with: faber status {context.environment} (its migrations stay pending, none failed,"
            " while it runs; named as failed if it is killed)",
        ],
        result={"deploying_run": deploying, "deploying_migrations": migrations.split(", ")},
    )


MIGRATION_LOCK_POLL_SECONDS = 0.2


def _migration_sessions_once_waited(context: RunContext, conn: Any) -> list[str]:
    """The sessions holding faber's migration lock, waited for up to ``lock_wait_seconds`` as
    faber's own lock is: a killed run's migration session outlives it by a moment (until the
    server notices its dead client, its transaction rolling back), and the run waiting for faber's
    lock then takes over, as it would once that session were gone."""
    engine = context.database.engine
    deadline = time.monotonic() + context.settings.lock_wait_seconds
    holders = engine.migration_lock_holders(conn, context.database)
    if holders:
        context.emit(events.LOCK_WAITING_FOR_MIGRATION_SESSION, sessions=holders)
    while holders and time.monotonic() < deadline:
        pause(MIGRATION_LOCK_POLL_SECONDS)
        holders = engine.migration_lock_holders(conn, context.database)
    return holders


def _still_migrating(context: RunContext, sessions: list[str]) -> Locked:
    named = ", ".join(sessions)
    hint = context.database.engine.lock_release_hint
    return Locked(
        f"A migration session of another faber run is still open in the database (session {named}) after "
        f"{context.settings.lock_wait_seconds:g} s, though that run's session holding faber's lock was ended: its "
        "migration may yet commit; nothing was changed",
        suggestions=[
            "Wait for that run to end (a killed run's session ends once the server notices, its open transaction "
            "rolling back), then run the same command again",
            f"Check on it with: faber status {context.environment}",
            "Or end the session (its open transaction rolls back; a statement that commits by itself, such as "
            f"MySQL's DDL, may have committed already): {re.sub(r'<[^>]+>', sessions[0], hint)}",
        ],
        result={"migration_sessions": sessions},
    )


def with_killed_runs(context: RunContext, state: MigrationState) -> MigrationState:
    """``state`` with each migration a killed deploy may have left in part recorded as failed."""
    try:
        with context.database.session() as conn:
            unfinished = left_by_killed_runs(context, conn, set(state.applied))
    except context.database.connect_errors as exc:
        # Unreachable, the status read that follows says so; refused (a user without the
        # privilege on faber's table), the run goes on without the check, saying so.
        _not_checked(context, exc)
        return state
    failed = set(state.failed)
    added = [
        MigrationRecord(name=item.migration, state="failed", logs=KILLED)
        for item in unfinished
        if item.migration not in failed
    ]
    return state.model_copy(update={"records": [*state.records, *added]}) if added else state


def _not_checked(context: RunContext, exc: Exception) -> None:
    """Once per run: the record could not be read, said on stderr and kept for :func:`unchecked`."""
    if not context.database.learnt.get(_UNCHECKED):
        context.database.learnt[_UNCHECKED] = f"{UNCHECKED}: {_warn(UNCHECKED, context, exc)}"


def unchecked(context: RunContext) -> str | None:
    """Why this run could not read the record of deploys killed inside a migration that runs
    outside a transaction (so a migration one left in part is not reported as failed), if it could
    not: ``result.unfinished_migrations_unchecked`` of status and deploy documents."""
    return context.database.learnt.get(_UNCHECKED)


def undone_by_backups_until(context: RunContext, state: MigrationState) -> dt.datetime | None:
    """The time by which a backup that undoes what killed deploys left of ``state``'s failed
    migrations was taken (a later one holds what they committed); None when no killed deploy left
    one (or the record cannot be read)."""
    try:
        with context.database.session() as conn:
            unfinished = left_by_killed_runs(context, conn, set(state.applied))
    except context.database.connect_errors:
        return None
    return min((item.before_run for item in unfinished if item.migration in state.failed), default=None)


def failed_names(state: MigrationState) -> str:
    """The failed migrations, each left by a killed deploy saying so."""
    killed = {record.name for record in state.records if record.state == "failed" and record.logs == KILLED}
    return ", ".join(f"{name} ({KILLED})" if name in killed else name for name in state.failed)
