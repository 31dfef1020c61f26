"""Writes since the backup: did anything other than faber change rows after the backup was taken?

A restore brings every table back to the backup, so rows the application wrote since are
discarded. Before restoring, faber compares PostgreSQL's row-change counters of every user
table (``n_tup_ins + n_tup_upd + n_tup_del`` in ``pg_stat_user_tables``) with the counters it
recorded just before the backup, and subtracts the rows faber's own migrations wrote (which
handlers measure in each migration's transaction, ``pg_stat_xact_user_tables``). What remains
was written by someone else.

The baseline lives in faber's own schema (``<faber_schema>.faber_backup_baselines``), which
restores never touch, so a ``faber rollback --to ID`` in another CI job finds it.

What the counters can and cannot tell, and how faber errs:

- **Flush delay.** Another session reports its counters when it disconnects, or when it goes
  idle at most once a second; a session that went idle less than a second after its last report
  reports within 10 s (PostgreSQL 15's ``PGSTAT_IDLE_INTERVAL``). faber therefore waits until
  every idle session of the database has been idle for :data:`IDLE_FLUSH_SECONDS` (at most that
  long, at least :data:`MIN_WAIT_SECONDS`); the whole :data:`IDLE_FLUSH_SECONDS` when it may not
  see when some session went idle (its role lacks ``pg_read_all_stats``). It does not wait when
  no other session is connected to the database: from PostgreSQL 15 a session reports its
  counters as it ends, before it leaves ``pg_stat_activity``. Writes of a transaction still open
  are not counted: sessions holding write locks on user tables at that moment are reported as
  ``in_flight``, and a session busy without a pause can hold its counts back for up to a minute.
- **Counted before the backup.** The baseline is read just before the backup starts, so
  writes in between are counted as "since the backup" though the backup has them: a false
  positive, the safe direction.
- **Aborted transactions count.** A rolled-back insert still counts. faber's own failed
  migration is measured by the handler too (after rolling back to a savepoint the counters stay
  visible); an application's rolled-back writes show up as writes.
- **Unknown attribution.** A handler that does not measure its migrations' writes (the
  Sequelize runner, TypeORM migrations outside a transaction, third-party handlers), or a run
  killed since the backup (it recorded none of its writes), makes faber's share unknown: every counted write is then
  reported as possibly the application's (``attribution: "unknown"``), and the policy treats it
  as an application write. Except in the tool's bookkeeping table, which the handler declares
  (``MigrationState.bookkeeping_table``, recorded with the baseline): only faber writes there, so
  its rows are never counted, and a failed deploy that wrote nothing else is restored under
  ``refuse``.
- **Resets.** A server restart (a crash resets the counters), ``pg_stat_reset()``, or a table
  recreated since the backup (a migration that dropped and recreated it, an earlier restore)
  makes the counters incomparable: the result is ``unknown``, with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from faber_core import events
from faber_core.context import Database, LockCheck, RunContext
from faber_core.engines import LOCK_LOST
from faber_core.engines.postgres import server_version_num
from faber_core.errors import SessionRefused
from faber_core.models import ApplyOutcome, BackupRecord
from faber_core.postgres.sql import keep_strings_read_as_faber
from faber_core.results import SequenceDraws, TableWrites, WritesSinceBackup
from faber_core.safety.timeouts import session_timeouts_again

TABLE = "faber_backup_baselines"
BASELINES_KEPT = 200
"""Baselines kept per environment; restoring an older backup reports its writes as unknown."""
IDLE_FLUSH_SECONDS = 10.5
"""An idle session has reported its counters once it has been idle this long (PGSTAT_IDLE_INTERVAL + margin)."""
MIN_WAIT_SECONDS = 1.1
"""Busy sessions report at their next idle moment, at most once a second (PGSTAT_MIN_INTERVAL + margin)."""
SESSIONS_END_SECONDS = 10.0
"""How long a restore waits for the sessions it ended to be gone before reading what they reported."""
_REPORTS_AS_IT_ENDS = 150000
"""From PostgreSQL 15 a session reports its counters as it ends, before it leaves pg_stat_activity
(before, a statistics collector process received them later)."""
_OTHER_SESSIONS = """
SELECT count(*),
       count(*) FILTER (WHERE backend_type IS NULL),
       extract(epoch FROM now() - max(state_change) FILTER (WHERE state = 'idle' AND backend_type = 'client backend'))
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name NOT LIKE 'faber%%'
"""
"""Sessions of the database but faber's: how many, how many of them faber's role may not see the
state of (PostgreSQL shows it only to their own role, superusers and ``pg_read_all_stats``), and
how long ago the last idle one went idle."""

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    environment           text NOT NULL,
    backup_id             text NOT NULL,
    taken_at              timestamptz NOT NULL,
    stats_reset           timestamptz,
    server_started_at     timestamptz NOT NULL,
    counters              jsonb NOT NULL,
    faber_writes          jsonb NOT NULL DEFAULT '{{}}',
    faber_writes_known    boolean NOT NULL DEFAULT true,
    bookkeeping_table     text,
    sequences             jsonb,
    PRIMARY KEY (environment, backup_id)
)
"""
# Tables created by an older faber get the columns it did not have on the next backup.
_ADD_NEWER_COLUMNS = (
    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS bookkeeping_table text, ADD COLUMN IF NOT EXISTS sequences jsonb"
)
IS_A_FABER_SCHEMA = r"""(
    EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'faber_deployments')
    AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relname NOT LIKE 'faber\_%%')
    AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace = n.oid AND p.proname NOT LIKE 'faber\_%%')
    AND NOT EXISTS (
        SELECT FROM pg_catalog.pg_type t
        WHERE t.typnamespace = n.oid AND t.typrelid = 0 AND t.typelem = 0 AND t.typname NOT LIKE 'faber\_%%'
    )
)"""
"""Whether the schema ``n`` (a ``pg_namespace`` row) is a faber_schema, this project's or another's
deploying the same database: it holds faber's history table and nothing but ``faber_*`` objects.
Restores keep such schemas as they are, so their rows are never writes a restore discards."""

_NOT_IN_A_FABER_SCHEMA = f"""
s.schemaname <> %s
AND NOT EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = s.schemaname AND {IS_A_FABER_SCHEMA})"""

LARGE_OBJECT_CATALOGS = ("pg_catalog.pg_largeobject", "pg_catalog.pg_largeobject_metadata")
_LARGE_OBJECT_CATALOGS = ", ".join(f"'{name}'::regclass" for name in LARGE_OBJECT_CATALOGS)
"""Where the database keeps its large objects (``lo_from_bytea``, ``lo_import``): one row per large
object in ``pg_largeobject_metadata``, one per 2 kB page of its data in ``pg_largeobject``. A
restore drops them and brings back the backup's, so their rows count like a user table's."""

_FREE_SEQUENCES = """
SELECT c.oid, n.nspname AS schemaname, format('%I.%I', n.nspname, c.relname) AS name,
       coalesce((pg_catalog.pg_sequence_last_value(c.oid) - q.seqstart) / q.seqincrement + 1, 0) AS drawn
FROM pg_catalog.pg_sequence q
JOIN pg_catalog.pg_class c ON c.oid = q.seqrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT pg_catalog.pg_is_other_temp_schema(n.oid)
  AND CASE WHEN c.relkind = 'S' THEN pg_catalog.has_sequence_privilege(c.oid, 'SELECT,USAGE') END
  AND NOT EXISTS (
    SELECT FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
"""
"""The values drawn (``nextval``) from every sequence no table column owns, since it was created or
last set: a restore sets each back to the backup's, and hands the values drawn since out again. A
sequence a column owns (``serial``, identity, ``OWNED BY``) draws for that table's rows, which are
counted with the table, and a value drawn for a row the restore discards may be drawn again.
Sequences faber's role has neither ``SELECT`` nor ``USAGE`` on are left out (it may not read
them). A value drawn is never taken back, so no transaction must end for it to be seen. Reading
one locks it (``RowExclusiveLock``, as ``nextval`` does) until the transaction ends."""

_COUNTERS = f"""
SELECT s.relid::bigint, format('%%I.%%I', s.schemaname, s.relname), s.n_tup_ins + s.n_tup_upd + s.n_tup_del
FROM pg_stat_user_tables s WHERE {_NOT_IN_A_FABER_SCHEMA}
UNION ALL
SELECT s.relid::bigint, format('%%I.%%I', s.schemaname, s.relname), s.n_tup_ins + s.n_tup_upd + s.n_tup_del
FROM pg_stat_sys_tables s WHERE s.relid IN ({_LARGE_OBJECT_CATALOGS})
"""
_SEQUENCE_COUNTERS = f"""
SELECT s.oid::bigint, s.name, s.drawn FROM ({_FREE_SEQUENCES.replace("%", "%%")}) s WHERE {_NOT_IN_A_FABER_SCHEMA}
"""
_IN_FLIGHT = """
SELECT DISTINCT a.pid, a.application_name, format('%%I.%%I', n.nspname, c.relname)
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND a.pid <> pg_backend_pid() AND a.application_name NOT LIKE 'faber%%'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s) AND c.relkind IN ('r', 'p')
ORDER BY 1, 3
"""


@dataclass
class Counters:
    """Row-change counters of every user table at one moment, with what would make them incomparable."""

    tables: dict[int, tuple[str, int]]
    """relid -> (qualified name, inserted + updated + deleted); the large objects' catalogs too"""
    stats_reset: dt.datetime | None
    server_started_at: dt.datetime
    sequences: dict[int, tuple[str, int]] | None = None
    """oid -> (qualified name, values drawn) of the sequences no column owns (``_FREE_SEQUENCES``);
    None in a baseline recorded before faber counted them."""


# For handlers: measuring a migration's own writes ------------------------------------------

# PostgreSQL's pg_stat_xact_* counters of a table include this session's earlier transactions
# until the session reports them, which it does when idle and at most once a second. Asking for
# that report in every measured transaction (PostgreSQL 15 and later) keeps each measurement to
# its own transaction; before 15 nothing can ask for it, so migrations are not measured there
# (faber's share is unknown: every counted write is treated as the application's, the safe side).
_REPORTS_ON_REQUEST = 150000
# Every table the transaction wrote to, it holds a lock on: looking only at those is cheap
# however many tables the database has. A session's relation locks are in its own database but
# for those on the shared catalogs, which are in pg_catalog and left out anyway: the query need
# not look the database up (it is planned again for every migration).
_LOCKED_BY_THIS_TRANSACTION = (
    "SELECT l.relation FROM pg_locks l WHERE l.locktype = 'relation' AND l.pid = pg_backend_pid()"
)
# Sequences are not measured per migration: nextval is not transactional, and a sequence's value
# moves with every session's draws while a migration runs; crediting the difference to the
# migration would hide the application's draws. A migration's own draws from a free sequence
# count as others', which refuses a restore that might not have needed to (the safe side).
_WRITES_TO_LOCKED_TABLES = f"""
SELECT format('%I.%I', n.nspname, c.relname), w.rows FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace,
LATERAL (SELECT pg_stat_get_xact_tuples_inserted(c.oid) + pg_stat_get_xact_tuples_updated(c.oid)
                + pg_stat_get_xact_tuples_deleted(c.oid) AS rows) w
WHERE (c.oid IN ({_LOCKED_BY_THIS_TRANSACTION}) AND c.relkind IN ('r', 'p')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
       -- large object functions release their catalogs' locks as they return
       OR c.oid IN ({_LARGE_OBJECT_CATALOGS}))
  AND w.rows > 0
"""
# After a rollback to a savepoint the locks taken inside it are released, but its counts stay.
_WRITES_TO_ANY_TABLE = f"""
SELECT format('%I.%I', schemaname, relname), n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables
WHERE n_tup_ins + n_tup_upd + n_tup_del > 0
UNION ALL
SELECT format('%I.%I', schemaname, relname), n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_sys_tables
WHERE relid IN ({_LARGE_OBJECT_CATALOGS}) AND n_tup_ins + n_tup_upd + n_tup_del > 0
"""


def _reported(writes: str) -> str:
    """One statement: the rows per table that ``writes`` counts, as one JSON object, and the
    session asked to report its counters at its next idle moment (so the next transaction's
    counts are its own). An aggregate always gives one row, so the request is always made."""
    return (
        "SELECT pg_stat_force_next_flush(), coalesce(jsonb_object_agg(w.table_name, w.row_count), '{}') AS table_writes"
        f" FROM ({writes}) AS w(table_name, row_count)"
    )


_REPORTED_WRITES_TO_LOCKED_TABLES = _reported(_WRITES_TO_LOCKED_TABLES)
_REPORTED_WRITES_TO_ANY_TABLE = _reported(_WRITES_TO_ANY_TABLE)


@dataclass
class Measurement:
    """Rows written per table by the transactions measured into it; None once one could not be measured."""

    rows: dict[str, int] | None = field(default_factory=dict)
    rolled_back: bool = False
    """Set by :func:`run_measured_script` and :func:`measured_transaction` when an interrupt stopped
    the work and its transaction rolled back: none of it remains, and what it tried is in ``rows``."""

    def add(self, rows: dict[str, int] | None) -> None:
        if rows is None or self.rows is None:
            self.rows = None
            return
        for table, count in rows.items():
            self.rows[table] = self.rows.get(table, 0) + count

    def unmeasured(self) -> None:
        """Writes happened that could not be measured (e.g. statements committed one by one)."""
        self.rows = None


@contextmanager
def measured_transaction(conn: psycopg.Connection, into: Measurement | None = None) -> Iterator[Measurement]:
    """A transaction on ``conn`` whose row writes are measured (added to ``into``), whether it commits or fails.

    The work runs in a savepoint inside it: when it fails, the savepoint is rolled back, the
    counts of what it tried stay visible to the transaction, are measured, and then everything
    is rolled back as usual. The same on an interrupt (``KeyboardInterrupt``), which also sets
    ``into.rolled_back``, so the handler can tell faber nothing of the migration remains
    (``context.migration_failed``). Use it for a migration and its bookkeeping row::

        measured = Measurement()
        with measured_transaction(conn, measured):
            conn.execute(migration_sql)
            record_applied(conn)
        AppliedMigration(..., table_writes=measured.rows)    # on failure too: MigrationFailure(table_writes=...)
    """
    measurement = into if into is not None else Measurement()
    keep_strings_read_as_faber(conn)  # or the server could read the work's SQL otherwise than faber did
    with conn.transaction():
        try:
            with conn.transaction():
                yield measurement
        except psycopg.Error:
            measurement.add(_transaction_writes(conn, _REPORTED_WRITES_TO_ANY_TABLE))
            raise
        except KeyboardInterrupt:
            # psycopg cancelled the statement and the savepoint is rolled back; the transaction
            # rolls back as the interrupt leaves it, so nothing of the work remains.
            measurement.rolled_back = True
            try:
                measurement.add(_transaction_writes(conn, _REPORTED_WRITES_TO_ANY_TABLE))
            except psycopg.Error:
                measurement.unmeasured()  # the interrupt goes on all the same
            raise
        # The migration may have cleared the session's timeouts: set again with the measurement,
        # committed with the migration, for the next one.
        again = session_timeouts_again(conn)
        if again and conn.info.server_version < _REPORTS_ON_REQUEST:
            conn.execute(again)  # no measurement to send them with on this server
        measurement.add(_transaction_writes(conn, _REPORTED_WRITES_TO_LOCKED_TABLES, before=again))


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
_MEASURED = "faber_measured"
"""The savepoint a measured script runs in, so what it tried can be measured after it failed."""


def measurement_statements(database: Database) -> dict[str, list[str]] | None:
    """The SQL with which a migration run in another process (an ORM's runner) is measured as
    :func:`measured_transaction` measures one in faber's: ``start``, in the migration's transaction
    before any of its statements (a savepoint); ``before_commit``, after its last statement and
    before its commit; ``after_failure``, once it failed and before its rollback (back to the
    savepoint, where the counts of what it tried stay visible). The last statement of the latter
    two returns one row whose ``table_writes`` column is a JSON object, rows per table.
    ``after_unmeasured``, after a migration that could not be measured (no transaction of its own):
    the session reports its counts at its next idle moment, so the next migration's measure holds
    its own rows only. None where nothing can be measured: on a server before PostgreSQL 15, or one
    faber cannot reach.
    """
    version = server_version_num(database)
    if version is None or version < _REPORTS_ON_REQUEST:
        return None
    return {
        "start": [f"SAVEPOINT {_MEASURED}"],
        "before_commit": [_REPORTED_WRITES_TO_LOCKED_TABLES],
        "after_failure": [f"ROLLBACK TO SAVEPOINT {_MEASURED}", _REPORTED_WRITES_TO_ANY_TABLE],
        "after_unmeasured": ["SELECT pg_stat_force_next_flush()"],
    }


def run_measured_script(
    conn: psycopg.Connection, script: str, into: Measurement, *, lock_check: LockCheck | None = None
) -> None:
    """``script`` in one transaction whose row writes are added to ``into``, in one round trip.

    The same guarantees as :func:`measured_transaction`, for a handler whose migration and
    bookkeeping are SQL text: ``BEGIN``, a savepoint, ``script``, the measurement and ``COMMIT``
    go to the server as one message (simple query protocol), so a migration costs one network
    round trip instead of one per statement. ``script`` must not control transactions itself
    (no ``BEGIN``, ``COMMIT``, ``SAVEPOINT``; :func:`faber_core.postgres.sql.is_transactional`).
    ``conn`` must be in autocommit mode and outside a transaction.

    When a statement fails the server skips the rest of the message, so nothing is committed;
    one more round trip measures what was tried and rolls back; then the error is raised. The
    same on an interrupt (``KeyboardInterrupt``: psycopg cancels the script on the server), which
    also sets ``into.rolled_back`` when the transaction was still open, so the handler can tell
    faber nothing of the migration remains (``context.migration_failed``)::

        measured = Measurement()
        run_measured_script(conn, f"{migration_sql}\n;\n{bookkeeping_sql}", measured)

    ``lock_check`` (from ``context.start_migration(name, in_transaction=True)``) runs first in the
    transaction: when faber's lock was lost, nothing of ``script`` runs, and its error is raised.
    With it, the check and the measurement are prepared on ``conn`` the first time (a few more
    round trips per session): parsed and planned once, they cost the server about a third of
    what they cost as text in every message.
    """
    measurable = conn.info.server_version >= _REPORTS_ON_REQUEST
    # A script that may drop prepared statements gets the measurement as text, after it: the
    # check, before it, is prepared again if it was dropped, with nothing of a script run yet.
    prepared_measurement = lock_check is not None and not _may_drop_prepared(script)
    measured_writes = f"EXECUTE {_PREPARED_WRITES}" if prepared_measurement else _REPORTED_WRITES_TO_LOCKED_TABLES
    measurement = f"{measured_writes};\n" if measurable else ""
    check = f"EXECUTE {_PREPARED_CHECK};\n" if lock_check else ""
    keep_strings_read_as_faber(conn)  # or the server could read the script otherwise than faber did
    # An earlier migration may have cleared the session's timeouts (RESET ALL, DISCARD ALL).
    again = session_timeouts_again(conn)
    # The newline after the script ends a trailing -- comment. The savepoint is not released:
    # COMMIT commits it with the transaction, and the measurement counts its rows all the same.
    message = f"BEGIN;\n{again}SAVEPOINT {_MEASURED};\n{check}{script}\n;\n{measurement}COMMIT"
    cursor = conn.cursor()
    try:
        if lock_check is not None:
            _prepare(conn, lock_check.statement, measurable)
        try:
            cursor.execute(message)
        except psycopg.errors.InvalidSqlStatementName as exc:
            if lock_check is None or f'"{_PREPARED_CHECK}"' not in (exc.diag.message_primary or ""):
                raise
            # The session lost them (an earlier migration's DEALLOCATE or DISCARD): the message
            # stopped at the check, before anything of the script ran. Prepare them again.
            conn.execute("ROLLBACK")
            _prepared_on.pop(conn, None)
            _prepare(conn, lock_check.statement, measurable)
            cursor.execute(message)
    except psycopg.Error as exc:
        into.add(_failed_script_writes(conn) if measurable else None)
        if lock_check is not None and LOCK_LOST in (exc.diag.message_primary or ""):
            raise lock_check.lost() from None
        raise
    except KeyboardInterrupt:
        # Cancelled before its COMMIT, the transaction failed; after it, the script committed whole.
        into.rolled_back = conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        into.add(_failed_script_writes(conn) if measurable else None)
        raise
    finally:
        if not prepared_measurement:
            _prepared_on.pop(conn, None)  # the next script's message prepares them again
    into.add(_reported_rows(cursor) if measurable else None)


_PREPARED_CHECK = "faber_lock_check"
_PREPARED_WRITES = "faber_measured_writes"
_prepared_on: weakref.WeakKeyDictionary[psycopg.Connection, str] = weakref.WeakKeyDictionary()
"""The lock check each migration session has prepared, with the measurement, as far as faber knows."""


def _may_drop_prepared(script: str) -> bool:
    """Whether ``script`` may drop the session's prepared statements (``DEALLOCATE``, ``DISCARD``):
    a word search, so a comment naming them counts too (the safe side)."""
    lowered = script.lower()
    return "deallocate" in lowered or "discard" in lowered


def _prepare(conn: psycopg.Connection, lock_statement: str, measurable: bool) -> None:
    """Prepare the lock check and the measurement on ``conn`` unless it has them, replacing what
    is left of earlier ones."""
    if _prepared_on.get(conn) == lock_statement:
        return
    left = conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", [[_PREPARED_CHECK, _PREPARED_WRITES]]
    ).fetchall()
    for (name,) in left:  # one of the two names above
        conn.execute(f"DEALLOCATE {name}")
    conn.execute(f"PREPARE {_PREPARED_CHECK} AS {lock_statement}")
    if measurable:
        conn.execute(f"PREPARE {_PREPARED_WRITES} AS {_REPORTED_WRITES_TO_LOCKED_TABLES}")
    _prepared_on[conn] = lock_statement


def _failed_script_writes(conn: psycopg.Connection) -> dict[str, int] | None:
    """After a statement of :func:`run_measured_script` failed: the rows its transaction tried
    to write, then that transaction rolled back."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
        return None  # the connection is gone (the server rolls back), or nothing began
    try:
        return _reported_rows(
            conn.execute(f"ROLLBACK TO SAVEPOINT {_MEASURED};\n{_REPORTED_WRITES_TO_ANY_TABLE};\nROLLBACK")
        )
    except psycopg.Error:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.execute("ROLLBACK")
        return None


def _transaction_writes(conn: psycopg.Connection, query: str, *, before: str = "") -> dict[str, int] | None:
    """The rows ``query`` (one of the ``_REPORTED_...`` statements) counts, in one message after
    the statements ``before``; None, running nothing, on a server that cannot report them."""
    if conn.info.server_version < _REPORTS_ON_REQUEST:
        return None
    try:
        return _reported_rows(conn.execute(f"{before}{query}"))
    except psycopg.Error:  # the connection is gone: nothing to measure with
        return None


def _reported_rows(cursor: psycopg.Cursor) -> dict[str, int]:
    """The rows per table of the last statement of a message that returned rows, one of the
    ``_REPORTED_...`` statements (psycopg keeps every result of the message)."""
    last = None
    while True:
        if cursor.pgresult is not None and cursor.pgresult.status == _TUPLES_OK:
            last = cursor.fetchone()  # a script's own result sets come before it
        if not cursor.nextset():
            return last[1] if last is not None else {}


# Baselines and the comparison ------------------------------------------------------------


def read_counters(context: RunContext) -> Counters | None:
    """The counters now, for a baseline; None (reported) when they cannot be read: the backup goes on."""
    if not context.database.engine.supports("write_counters"):
        return None
    try:
        with context.database.session() as conn:
            return _counters(conn, context.config.database.faber_schema)
    except psycopg.Error as exc:
        context.emit(events.BACKUP_BASELINE_FAILED, error=context.redactor.redact(str(exc).strip()))
        return None


def _counters(conn: psycopg.Connection, faber_schema: str) -> Counters:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    tables = {relid: (name, changes) for relid, name, changes in conn.execute(_COUNTERS, [faber_schema]).fetchall()}
    sequences = {oid: (name, drawn) for oid, name, drawn in conn.execute(_SEQUENCE_COUNTERS, [faber_schema]).fetchall()}
    stats_reset, started = conn.execute(
        "SELECT (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),"
        " pg_postmaster_start_time()"
    ).fetchone()
    return Counters(tables, stats_reset, started, sequences)


def refresh_baseline(context: RunContext, backup: BackupRecord) -> None:
    """After a restore of ``backup`` committed, its baseline becomes the counters now: the database
    is the backup again, its tables created anew by the restore (their counters started again).
    Compared with the old baseline, a later rollback to the same backup (a retried job, a second
    rollback) could only say ``unknown``, and restore over the application's rows since. Writes
    between the restore's commit and this read go into the new baseline unseen. Never fails the
    restore: a failure leaves the old baseline, and ``unknown``."""
    if not context.database.engine.supports("write_counters"):
        return  # no counters to compare on this engine (MySQL, MariaDB)
    try:
        with context.database.session() as conn:
            # The restore's own session reports its rows as it ends, which may be just after its
            # client exited: read before that, they would count as the application's next time.
            restoring = conn.execute(
                "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE 'faber restore%%' AND pid <> pg_catalog.pg_backend_pid()"
            ).fetchall()
            wait_until_ended(conn, [pid for (pid,) in restoring])
            counters = _counters(conn, context.config.database.faber_schema)
            tables, sequences = _as_json(counters)
            with conn.transaction():
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET stats_reset = %s, server_started_at = %s, counters = %s, sequences = %s,"
                        " faber_writes = '{{}}', faber_writes_known = true WHERE environment = %s AND backup_id = %s"
                    ).format(_table(context)),
                    [
                        counters.stats_reset,
                        counters.server_started_at,
                        tables,
                        sequences,
                        context.environment,
                        backup.id,
                    ],
                )
    except psycopg.Error as exc:
        context.emit(
            events.BACKUP_BASELINE_FAILED, backup_id=backup.id, error=context.redactor.redact(str(exc).strip())
        )


def _as_json(counters: Counters) -> tuple[str, str]:
    """The counters of the tables and of the sequences, as a baseline's columns hold them."""
    return (
        json.dumps({str(relid): list(entry) for relid, entry in counters.tables.items()}),
        json.dumps({str(oid): list(entry) for oid, entry in (counters.sequences or {}).items()}),
    )


def _table(context: RunContext) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(context.config.database.faber_schema), sql.Identifier(TABLE))


def record_baseline(
    context: RunContext, backup: BackupRecord, counters: Counters | None, bookkeeping_table: str | None
) -> None:
    """Store ``counters`` (read just before ``backup`` started) for a later restore to compare with,
    and the migration tool's ``bookkeeping_table``, whose rows are faber's.

    Never fails the backup: a failure is reported, and the restore will say the writes are unknown.
    """
    if counters is None:
        return
    schema = sql.Identifier(context.config.database.faber_schema)
    tables, sequences = _as_json(counters)
    try:
        with context.database.session() as conn, conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(sql.SQL(_CREATE_TABLE).format(table=_table(context)))
            conn.execute(sql.SQL(_ADD_NEWER_COLUMNS).format(table=_table(context)))
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (environment, backup_id, taken_at, stats_reset, server_started_at, counters,"
                    " bookkeeping_table, sequences) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (environment, backup_id) DO NOTHING"
                ).format(_table(context)),
                [
                    context.environment,
                    backup.id,
                    backup.created_at,
                    counters.stats_reset,
                    counters.server_started_at,
                    tables,
                    bookkeeping_table,
                    sequences,
                ],
            )
            conn.execute(
                sql.SQL(
                    "DELETE FROM {table} WHERE environment = %s AND backup_id NOT IN ("
                    "SELECT backup_id FROM {table} WHERE environment = %s ORDER BY taken_at DESC LIMIT %s)"
                ).format(table=_table(context)),
                [context.environment, context.environment, BASELINES_KEPT],
            )
    except psycopg.Error as exc:
        context.emit(
            events.BACKUP_BASELINE_FAILED, backup_id=backup.id, error=context.redactor.redact(str(exc).strip())
        )


def record_faber_writes(context: RunContext, outcome: ApplyOutcome) -> None:
    """Add the rows this run's migrations wrote (as their handlers measured them) to every baseline
    of the environment: each was taken before this run, so a restore of any of them must not count
    these rows as the application's. A migration not measured makes faber's share unknown."""
    ran = [*outcome.applied, *([outcome.failure] if outcome.failure else [])]
    if not ran:
        return
    measured: dict[str, int] = {}
    for migration in ran:
        for table, rows in (migration.table_writes or {}).items():
            measured[table] = measured.get(table, 0) + rows
    known = all(migration.table_writes is not None for migration in ran)
    if not context.database.engine.supports("write_counters"):
        return
    try:
        with context.database.session() as conn:
            if conn.execute("SELECT to_regclass(%s)", [_table(context).as_string(conn)]).fetchone()[0] is None:
                return
            conn.execute(
                sql.SQL(_ADD_FABER_WRITES).format(_table(context)), [json.dumps(measured), known, context.environment]
            )
    except (psycopg.Error, SessionRefused) as exc:
        context.emit(events.BACKUP_BASELINE_FAILED, error=context.redactor.redact(str(exc).strip()))


_ADD_FABER_WRITES = """
UPDATE {} SET faber_writes = (
        SELECT coalesce(jsonb_object_agg(key, total), '{{}}') FROM (
            SELECT key, sum(value::bigint) AS total
            FROM (SELECT * FROM jsonb_each_text(faber_writes) UNION ALL SELECT * FROM jsonb_each_text(%s::jsonb)) part
            GROUP BY key) sums),
    faber_writes_known = faber_writes_known AND %s
WHERE environment = %s
"""


def writes_since_backup(
    context: RunContext, backup: BackupRecord, *, sessions_ended: bool = False
) -> WritesSinceBackup:
    """Compare the counters now with ``backup``'s baseline, minus faber's own writes.

    ``sessions_ended``: the application's sessions were ended (:func:`end_application_sessions`)
    while nothing could write the application's tables, so every count is in (from PostgreSQL 15)
    and the sessions since connected have none to report: faber does not wait for reports."""
    faber_schema = context.config.database.faber_schema
    engine = context.database.engine
    if not engine.supports("write_counters"):
        return WritesSinceBackup(backup_id=backup.id, status="unknown", reason=engine.unsupported["write_counters"])
    try:
        with context.database.session() as conn:
            if not (sessions_ended and conn.info.server_version >= _REPORTS_AS_IT_ENDS):
                _wait_for_reports(context, conn)
            baseline = _baseline(conn, context, backup)
            now = _counters(conn, faber_schema)
            in_flight = [
                f"{pid} {app or '(no application_name)'} {table}"
                for pid, app, table in conn.execute(_IN_FLIGHT, [faber_schema]).fetchall()
            ]
    except psycopg.Error as exc:
        return WritesSinceBackup(
            backup_id=backup.id,
            status="unknown",
            reason=f"cannot read the counters: {context.redactor.redact(str(exc).strip())}",
        )
    if baseline is None:
        return WritesSinceBackup(
            backup_id=backup.id,
            status="unknown",
            in_flight=in_flight,
            reason="no baseline was recorded with this backup (taken by an older faber, or recording it failed)",
        )
    return compare(backup.id, baseline, now, in_flight)


def _wait_for_reports(context: RunContext, conn: psycopg.Connection) -> None:
    """Wait until other sessions' counters have reached the statistics (see the module docstring)."""
    others, unseen, idle_for = conn.execute(_OTHER_SESSIONS).fetchone()
    if others == 0 and conn.info.server_version >= _REPORTS_AS_IT_ENDS:
        return  # every session that wrote has ended, and has reported as it ended
    if unseen:
        wait = IDLE_FLUSH_SECONDS  # one of them may have gone idle just now
    elif idle_for is None:
        wait = MIN_WAIT_SECONDS
    else:
        wait = min(max(MIN_WAIT_SECONDS, IDLE_FLUSH_SECONDS - float(idle_for)), IDLE_FLUSH_SECONDS)
    context.emit(events.WRITES_WAITING, seconds=round(wait, 1))
    time.sleep(wait)


@dataclass
class Baseline:
    counters: Counters
    faber_writes: dict[str, int]
    faber_writes_known: bool
    bookkeeping_table: str | None
    """As ``format('%I.%I')`` names it, like the counters' names; None when it does not exist."""


def _baseline(conn: psycopg.Connection, context: RunContext, backup: BackupRecord) -> Baseline | None:
    exists = conn.execute("SELECT to_regclass(%s)", [_table(context).as_string(conn)]).fetchone()[0]
    if exists is None:
        return None
    # to_jsonb(b): a baseline table of an older faber has no bookkeeping_table or sequences column yet.
    row = conn.execute(
        sql.SQL(
            "SELECT counters, stats_reset, server_started_at, faber_writes, faber_writes_known,"
            " (SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c"
            "  JOIN pg_namespace n ON n.oid = c.relnamespace"
            "  WHERE c.oid = to_regclass(to_jsonb(b) ->> 'bookkeeping_table')),"
            " to_jsonb(b) -> 'sequences'"
            " FROM {} b WHERE environment = %s AND backup_id = %s"
        ).format(_table(context)),
        [context.environment, backup.id],
    ).fetchone()
    if row is None:
        return None
    counters, stats_reset, started, faber_writes, known, bookkeeping, sequences = row
    tables = {int(relid): (entry[0], int(entry[1])) for relid, entry in counters.items()}
    if sequences is not None:
        sequences = {int(oid): (entry[0], int(entry[1])) for oid, entry in sequences.items()}
    known = known and not _killed_since(conn, context, backup)
    return Baseline(Counters(tables, stats_reset, started, sequences), dict(faber_writes), known, bookkeeping)


def _killed_since(conn: psycopg.Connection, context: RunContext, backup: BackupRecord) -> bool:
    """Whether a run was killed since ``backup`` (or while taking it, then deploying): its history
    row never ended. It recorded none of its writes (:func:`record_faber_writes`), so faber's share
    of what the counters show is unknown, however the runs before it measured theirs."""
    from faber_core.audit.history import TABLE as HISTORY  # the deployment history, beside the baselines

    history = sql.SQL("{}.{}").format(sql.Identifier(context.config.database.faber_schema), sql.Identifier(HISTORY))
    if conn.execute("SELECT to_regclass(%s)", [history.as_string(conn)]).fetchone()[0] is None:
        return False
    return conn.execute(
        sql.SQL(
            "SELECT EXISTS (SELECT FROM {} h WHERE h.status IN ('running', 'unfinished') AND h.id <> %s"
            " AND (h.backup_id = %s OR h.started_at >= %s))"
        ).format(history),
        [context.run_id, backup.id, backup.created_at],
    ).fetchone()[0]


def compare(backup_id: str, baseline: Baseline, now: Counters, in_flight: list[str]) -> WritesSinceBackup:
    def unknown(reason: str) -> WritesSinceBackup:
        return WritesSinceBackup(backup_id=backup_id, status="unknown", in_flight=in_flight, reason=reason)

    if now.stats_reset != baseline.counters.stats_reset:
        return unknown("the database's statistics were reset since the backup (pg_stat_reset)")
    if now.server_started_at != baseline.counters.server_started_at:
        return unknown("the server restarted since the backup, and a crash resets the counters")
    changes = _changes_since(baseline.counters.tables, now.tables)
    if isinstance(changes, str):
        return unknown(changes)
    changes.pop(baseline.bookkeeping_table or "", None)  # only faber writes there
    tables = [TableWrites(table=name, rows=rows) for name, rows in _others(changes, baseline.faber_writes)]
    sequences: list[SequenceDraws] = []
    not_compared = None
    if baseline.counters.sequences is None:
        not_compared = "sequences were not compared: this backup's baseline was recorded before faber counted them"
    else:
        drawn = _changes_since(baseline.counters.sequences, now.sequences or {}, _SET_BACK)
        if isinstance(drawn, str):
            return unknown(drawn)
        sequences = [SequenceDraws(sequence=name, values=n) for name, n in _others(drawn, baseline.faber_writes)]
    return WritesSinceBackup(
        backup_id=backup_id,
        status="found" if tables or sequences else "none",
        tables=tables,
        sequences=sequences,
        attribution="exact" if baseline.faber_writes_known else "unknown",
        in_flight=in_flight,
        reason=not_compared,
    )


_SET_BACK = "the sequence {} was set back since the backup (setval, ALTER SEQUENCE RESTART, or it cycled)"


def _changes_since(
    before: dict[int, tuple[str, int]],
    now: dict[int, tuple[str, int]],
    went_back: str = "the counters of {} went back since the backup",
) -> dict[str, int] | str:
    """The count of each relation now minus its count at the backup, by name; or why they cannot be compared."""
    names_at_backup = {name for name, _ in before.values()}
    changes: dict[str, int] = {}
    recreated = []
    for relid, (name, count) in now.items():
        at_backup = before.get(relid)
        if at_backup is None and name in names_at_backup:
            recreated.append(name)  # dropped and created again (a migration, an earlier restore)
        elif at_backup is None:
            changes[name] = count  # created since the backup: every count is new
        elif count < at_backup[1]:
            return went_back.format(name)
        else:
            changes[name] = count - at_backup[1]
    if recreated:
        return f"recreated since the backup, so their counters started again: {', '.join(sorted(recreated))}"
    return changes


def _others(changes: dict[str, int], faber_writes: dict[str, int]) -> list[tuple[str, int]]:
    """What is left of each count once faber's own share is taken away, where something is."""
    left = ((name, count - faber_writes.get(name, 0)) for name, count in sorted(changes.items()))
    return [(name, count) for name, count in left if count > 0]


def beyond(earlier: WritesSinceBackup, now: WritesSinceBackup) -> WritesSinceBackup:
    """The rows and values ``now`` counts beyond those ``earlier`` counted, both since the same
    backup: what was written between the two checks."""
    seen = {t.table: t.rows for t in earlier.tables}
    tables = [
        TableWrites(table=t.table, rows=t.rows - seen.get(t.table, 0))
        for t in now.tables
        if t.rows > seen.get(t.table, 0)
    ]
    drawn = {s.sequence: s.values for s in earlier.sequences}
    sequences = [
        SequenceDraws(sequence=s.sequence, values=s.values - drawn.get(s.sequence, 0))
        for s in now.sequences
        if s.values > drawn.get(s.sequence, 0)
    ]
    status = "found" if tables or sequences else ("unknown" if now.status == "unknown" else "none")
    return now.model_copy(update={"status": status, "tables": tables, "sequences": sequences})


def added(report: WritesSinceBackup, more: WritesSinceBackup) -> WritesSinceBackup:
    """``report`` with the rows of ``more`` (written after ``report`` read the counters) added."""
    rows = {t.table: t.rows for t in report.tables}
    for t in more.tables:
        rows[t.table] = rows.get(t.table, 0) + t.rows
    tables = [TableWrites(table=name, rows=count) for name, count in sorted(rows.items())]
    status = "found" if tables or report.sequences else report.status
    return report.model_copy(update={"status": status, "tables": tables})


# Committed changes only: n_tup_* also count the rows of transactions that rolled back (those of
# the sessions a swap ends, too), n_mod_since_analyze does not. An ANALYZE sets it back to zero.
_COMMITTED_CHANGES = f"""
SELECT format('%%I.%%I', s.schemaname, s.relname), s.n_mod_since_analyze FROM pg_stat_user_tables s
WHERE {_NOT_IN_A_FABER_SCHEMA}
"""


_APPLICATION_SESSIONS = """
SELECT pid, application_name, usename FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND pid <> pg_catalog.pg_backend_pid() AND application_name NOT LIKE 'faber%%'
  AND (backend_type = 'client backend' OR backend_type IS NULL)
"""
"""The sessions of the database but faber's own (every faber session's name starts with
``faber``): clients', not PostgreSQL's workers; NULL: a session of a role faber's may not see."""


class EndedSession(NamedTuple):
    """A session of the application faber ended: its pid, ``application_name`` and role (None
    where faber's role may not see them)."""

    pid: int
    application_name: str | None
    role: str | None


def end_application_sessions(
    conn: psycopg.Connection, ended: Callable[[list[EndedSession]], None] | None = None
) -> bool:
    """End every session of ``conn``'s database but faber's (the sessions the counters are
    compared for, see ``_OTHER_SESSIONS``) and wait until they are gone (:func:`wait_until_ended`):
    from PostgreSQL 15 each reports its counts as it ends. ``conn`` is in autocommit. Returns
    whether they all ended; one faber's role may not end (another role's, without
    ``pg_signal_backend``; a superuser's) is left, and may still hold counts back. ``ended`` is
    called with those it ended, if any (for the audit trail: ``context.emit``)."""
    terminated, left = terminate_application_sessions(conn)
    if terminated and ended is not None:
        ended(terminated)
    return wait_until_ended(conn, [session.pid for session in terminated]) and not left


def terminate_application_sessions(
    conn: psycopg.Connection, among: list[int] | None = None
) -> tuple[list[EndedSession], list[int]]:
    """Ask the server to end the application's sessions of ``conn``'s database (those of them
    ``among`` these pids if given), without waiting: the sessions it is ending, and the pids of
    the application's sessions faber's role may not end."""
    query, params = _APPLICATION_SESSIONS, []
    if among is not None:
        query, params = query + " AND pid = ANY(%s)", [among]
    ended, left = [], []
    for pid, name, role in conn.execute(query, params).fetchall():
        try:
            terminated = conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", [pid]).fetchone()[0]
        except psycopg.errors.InsufficientPrivilege:
            terminated = False
        if terminated:
            ended.append(EndedSession(pid, name, role))
        else:
            left.append(pid)
    return ended, left


def wait_until_ended(conn: psycopg.Connection, pids: list[int]) -> bool:
    """Wait until the sessions ``pids`` have ended, at most :data:`SESSIONS_END_SECONDS`; whether they have."""
    deadline = time.monotonic() + SESSIONS_END_SECONDS
    while pids:
        conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        if not conn.execute("SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)", [pids]).fetchone():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def committed_changes(conn: psycopg.Connection, faber_schema: str) -> dict[str, int]:
    """Rows changed by committed transactions per user table, as reported so far."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return dict(conn.execute(_COMMITTED_CHANGES, [faber_schema]).fetchall())


def committed_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The rows committed per table from ``before`` to ``after`` (both :func:`committed_changes`).
    A table whose count went back was analyzed meanwhile: what was committed there is not known,
    and it is left out rather than guessed."""
    return {
        table: count - before.get(table, 0) for table, count in sorted(after.items()) if count > before.get(table, 0)
    }


def as_result(report: WritesSinceBackup) -> dict[str, Any]:
    return report.model_dump(mode="json")
